"""The GRAM chain through run_plan with the tiny model: pretrain (saves model/) -> judge fine-tune
that loads it by path -> per-subset and RewardBench section metrics."""

import json

import pytest
from transformers import AutoModelForCausalLM

import run_plan
from rm_exps.outputs import read_json
from rm_exps.plan import PlanError, build_runs

SUBSETS = ["alpacaeval-easy", "mt-bench-hard", "donotanswer", "hep-go"]


def write_pairs(folder, n_train=6, n_test=8):
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [
            {
                "prompt": f"Is {i} even?",
                "chosen": "yes" if i % 2 == 0 else "no",
                "rejected": "no" if i % 2 == 0 else "yes",
                "subset": SUBSETS[i % len(SUBSETS)],
            }
            for i in range(n)
        ]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(folder)


def chain_plan(tmp_path, data):
    out = tmp_path / "out"
    common = {
        "dataset_path": data,
        "outputs_dir": str(out),
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-3,
        "num_test_samples": 8,
        "judge_max_answer_tokens": 16,
    }
    return {
        "configurations": [
            {
                "base_config": {
                    **common,
                    "experiment_name": "pre",
                    "model": "tiny-random-llama",
                    "objective": "gram_pretrain",
                    "save_model": True,
                    "score_metric_name": "eval test loss",
                    "score_largest": False,
                }
            },
            {
                "base_config": {
                    **common,
                    "experiment_name": "judge_{judge_order}",
                    "model": str(out / "pre" / "model"),
                    "objective": "gram_judge",
                    "evaluation_datasets_paths": [data],
                    "evaluation_datasets_names": ["rb"],
                    "evaluation_datasets_splits": ["test"],
                },
                "options": {"judge_order": ["random", "both"]},
            },
        ]
    }


def test_pretrain_then_judge_chain(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(chain_plan(tmp_path, data)))
    assert run_plan.main(["--plan", str(path)]) == 0
    out = tmp_path / "out"
    pre = read_json(out / "pre" / "summary.json")
    assert pre["status"] == "completed" and pre["score"] > 0  # eval test loss (per-token NLL)
    assert not [k for k in pre["last_tracked_values"] if "accuracy" in k or "rewardbench" in k]
    AutoModelForCausalLM.from_pretrained(out / "pre" / "model")
    for order in ("random", "both"):
        summary = read_json(out / f"judge_{order}" / "summary.json")
        assert summary["status"] == "completed", summary.get("error")
        values = {k: v["value"] for k, v in summary["last_tracked_values"].items()}
        for split in ("train", "test", "rb_test"):
            for metric in ("accuracy", "position consistency", "slot A rate", "loss", "chosen reward"):
                assert f"eval {split} {metric}" in values
            assert values[f"eval {split} chosen reward"] + values[f"eval {split} rejected reward"] == pytest.approx(1)
        for subset in SUBSETS:
            assert 0 <= values[f"eval rb_test accuracy {subset}"] <= 1
        for section in ("chat", "chat hard", "safety", "reasoning", "score"):
            assert f"eval rb_test rewardbench {section}" in values
        assert {"train loss", "train accuracy", "train verdict prob"} <= set(values)
        assert read_json(out / f"judge_{order}" / "config.json")["model"] == str(out / "pre" / "model")
    # "both" trains on twice the rows of "random" (one order per pair)
    assert (
        read_json(out / "judge_both" / "summary.json")["train_tokens"]
        > 1.5 * read_json(out / "judge_random" / "summary.json")["train_tokens"]
    )


def test_a_model_folder_no_earlier_run_saves_is_still_an_error(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    plan = chain_plan(tmp_path, data)
    plan["configurations"][0]["base_config"]["save_model"] = False
    with pytest.raises(PlanError, match="model folder not found"):
        build_runs(plan)
    plan["configurations"].reverse()  # the stage that saves it comes too late
    plan["configurations"][1]["base_config"]["save_model"] = True
    with pytest.raises(PlanError, match="model folder not found"):
        build_runs(plan)


def test_a_pretrain_run_scored_by_accuracy_is_a_plan_error(tmp_path):
    plan = chain_plan(tmp_path, write_pairs(tmp_path / "pairs"))
    del plan["configurations"][0]["base_config"]["score_metric_name"]
    with pytest.raises(PlanError, match="gram_pretrain does not rank answers"):
        build_runs(plan)
