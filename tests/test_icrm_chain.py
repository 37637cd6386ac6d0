"""The ICRM chain end to end with a tiny model: SFT generator -> ICRM and GRM reward models (with
best-of-N and DPO pairs) -> DPO policy, and a saved RM rescoring the cached samples without
training, chained with 'run:<experiment_name>'."""

import json

import pytest

import run_plan
from rm_exps.config import RunConfig
from rm_exps.outputs import read_json
from rm_exps.run_data import load_train_test

ARITHMETIC = {"name": "arithmetic", "num_train_samples": 16, "num_test_samples": 4}


def test_tiny_chain_end_to_end(tmp_path):
    common = {
        "model": "tiny-random-llama",
        "dataset_path": ARITHMETIC,
        "outputs_dir": str(tmp_path / "out"),
        "data_files_dir": str(tmp_path / "data_files"),
        "epochs": 1,
        "batch_size": 4,
        "lr": 1e-3,
        "num_train_samples": 8,
        "num_test_samples": 4,
        "bon_n": [1, 2, 4],
        "bon_num_prompts": 3,
        "bon_max_new_tokens": 6,
        "bon_batch_size": 2,
    }
    bon = {"bon_policy": "run:sft_gen", "dpo_pairs_num_prompts": 4, "save_model": True}
    plan = {
        "name": "chain",
        "configurations": [
            {
                "base_config": {
                    **common,
                    "experiment_name": "dpo_icrm",
                    "objective": "dpo",
                    "model": "run:sft_gen",
                    "dataset_path": "run:icrm",
                    "kl_coeff": 0.1,
                    "judge_model": "run:grm",
                    "policy_eval_num_prompts": 2,
                }
            },
            {
                "base_config": {
                    **common,
                    **bon,
                    "experiment_name": "icrm",
                    "objective": "icrm",
                    "reg_ratio": 0.1,
                    "generator": "run:sft_gen",
                    "judge_model": "run:grm",
                    "bon_reference": "run:grm",
                }
            },
            {"base_config": {**common, **bon, "experiment_name": "grm", "objective": "icrm", "reg_ratio": 0.0}},
            {"base_config": {**common, "experiment_name": "sft_gen", "objective": "sft", "save_model": True}},
            # a saved ICRM is a sequence-classification RM: rescoring the cached samples as ex_rm, without training
            {
                "base_config": {
                    **common,
                    "experiment_name": "rescore",
                    "objective": "ex_rm",
                    "model": "run:icrm",
                    "epochs": 0,
                    "bon_policy": "run:sft_gen",
                }
            },
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run_plan.main(["--plan", str(path)]) == 0
    out = tmp_path / "out"
    values = {
        name: read_json(out / name / "summary.json")["last_tracked_values"]
        for name in ("sft_gen", "grm", "icrm", "dpo_icrm")
    }
    icrm = values["icrm"]
    assert icrm["train consistency loss"]["value"] > 0 and "train consistency loss" not in values["grm"]
    for n in (1, 2, 4):
        assert 0 <= icrm[f"eval bon best-of-{n} accuracy"]["value"] <= 1
        assert 0 <= icrm[f"eval bon best-of-{n} win rate"]["value"] <= 1  # judged against GRM's selections
    assert icrm["eval bon pass@1"]["value"] <= icrm["eval bon pass@4"]["value"]
    # both reward models scored the same cached samples
    records = {
        name: [json.loads(line) for line in (out / name / "best_of_n" / "test.jsonl").read_text().splitlines()]
        for name in ("grm", "icrm")
    }
    assert [r["responses"] for r in records["grm"]] == [r["responses"] for r in records["icrm"]]
    assert len(records["icrm"]) == 3 and all(len(r["responses"]) == 4 for r in records["icrm"])
    rescored = [json.loads(line) for line in (out / "rescore" / "best_of_n" / "test.jsonl").read_text().splitlines()]
    assert [r["responses"] for r in rescored] == [r["responses"] for r in records["icrm"]]
    for mine, theirs in zip(rescored, records["icrm"]):
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-4)
    assert read_json(out / "rescore" / "summary.json")["last_epoch"] == -1
    assert len(list((tmp_path / "data_files" / "samples").glob("*.json"))) == 3  # test + train samples, start policy
    # DPO pairs come from train-split prompts the reward models were neither trained nor tested on
    rm_train, rm_test = load_train_test(RunConfig.model_validate(read_json(out / "icrm" / "config.json")))
    dpo_prompts = {
        json.loads(line)["prompt"] for line in (out / "icrm" / "best_of_n" / "train.jsonl").read_text().splitlines()
    }
    assert len(dpo_prompts) == 4 and not dpo_prompts & (set(rm_train["prompt"]) | set(rm_test["prompt"]))
    # DPO trained on the ICRM's pairs and was judged against the starting policy
    dpo = read_json(out / "dpo_icrm" / "summary.json")
    assert dpo["num_train_samples"] == values["icrm"]["eval bon dpo train pairs"]["value"]
    for key in (
        "eval policy judge reward",
        "eval policy start judge reward",
        "eval policy win rate",
        "eval policy accuracy",
        "eval policy start accuracy",
    ):
        assert key in values["dpo_icrm"], key
