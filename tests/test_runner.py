"""End to end with a tiny model: run folders, summary.json, skip-on-resume, failure isolation."""

import json

import pytest

import run_plan
from rm_exps.outputs import read_json

SUMMARY_KEYS = {
    "last_epoch",
    "score_name",
    "score_largest",
    "is_train_metric",
    "last_tracked_values",
    "num_train_samples",
    "num_test_samples",
    "status",
    "score",
    "config_hash",
    "wall_s",
    "train_s",
    "eval_s",
    "precompute_s",
    "train_tokens",
    "train_tokens_per_s",
    "padding_fraction",
    "peak_mem_mb",
    "environment",
}


def write_pairs(folder, n_train=6, n_test=4):
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [
            {
                "prompt": f"Is {i} even?",
                "chosen": "yes" if i % 2 == 0 else "no",
                "rejected": "no" if i % 2 == 0 else "yes",
            }
            for i in range(n)
        ]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(folder)


@pytest.fixture
def plan_file(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    plan = {
        "name": "tiny",
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "tiny_{objective}",
                    "model": "tiny-random-llama",
                    "dataset_path": data,
                    "outputs_dir": str(tmp_path / "out"),
                    "epochs": 2,
                    "batch_size": 2,
                    "gradient_accumulation_steps": 2,
                    "lr": 1e-3,
                    "num_test_samples": 4,
                    "evaluation_datasets_paths": [data],
                    "evaluation_datasets_names": ["again"],
                    "evaluation_datasets_splits": ["test"],
                },
                "options": {"objective": ["ex_rm", "im_rm", "gen_rm", "sft"]},
            }
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_tiny_plan_end_to_end_then_skip(plan_file, tmp_path, capsys):
    assert run_plan.main(["--plan", str(plan_file)]) == 0
    out = tmp_path / "out"
    for objective in ("ex_rm", "im_rm", "gen_rm", "sft"):
        folder = out / f"tiny_{objective}"
        summary = read_json(folder / "summary.json")
        assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
        assert summary["status"] == "completed" and summary["last_epoch"] == 1
        assert summary["num_train_samples"] == 6 and summary["num_test_samples"] == 4
        assert summary["environment"]["rm_exps"]["version"]
        assert read_json(folder / "config.json")["objective"] == objective
        assert (folder / "run.log").stat().st_size > 0
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records if r["kind"] == "eval"] == [0, 1]
        eval_metrics = read_json(folder / "eval_metrics.json")
        assert eval_metrics["epochs_with_values"] == [0, 1]
        values = summary["last_tracked_values"]
        if objective == "sft":
            assert {"train loss", "eval test chosen logprobs", "eval again_test rejected logprobs"} <= set(values)
        else:
            for split in ("train", "test", "again_test"):
                for metric in ("loss", "accuracy", "normalized abs reward margin", "chosen reward", "rejected reward"):
                    assert f"eval {split} {metric}" in values
            assert summary["score"] == values["eval test accuracy"]["value"]
            assert {"train loss", "train accuracy", "train reward margin"} <= set(values)
    table = capsys.readouterr().out
    assert "tiny_ex_rm" in table and "completed" in table

    # Running again skips every finished run without touching it.
    before = (out / "tiny_ex_rm" / "summary.json").stat().st_mtime_ns
    assert run_plan.main(["--plan", str(plan_file)]) == 0
    assert (out / "tiny_ex_rm" / "summary.json").stat().st_mtime_ns == before
    assert "skipped" in capsys.readouterr().out

    # A changed config for a finished run is an error that says what differs (nothing written)...
    assert run_plan.main(["--plan", str(plan_file), "--set", "lr=0.5"]) == 2
    assert "lr: 0.001 -> 0.5" in capsys.readouterr().err
    # ...unless --rerun.
    assert run_plan.main(["--plan", str(plan_file), "--set", "lr=0.5", "--set", "objective=sft", "--rerun"]) == 0


def test_a_failing_run_does_not_stop_the_next(tmp_path, capsys, monkeypatch):
    # A missing split is a plan error now; with the dataset checks switched off it is a problem validation
    # does not see, and it fails the run.
    monkeypatch.setattr("rm_exps.data.checks.dataset_problems", lambda path, splits=(): [])
    data = write_pairs(tmp_path / "pairs")
    plan = {
        "configurations": [
            {
                "base_config": {
                    "experiment_name": "r_{evaluation_datasets_splits}",
                    "model": "tiny-random-llama",
                    "dataset_path": data,
                    "outputs_dir": str(tmp_path / "out"),
                    "objective": "ex_rm",
                    "evaluation_datasets_paths": [data],
                    "evaluation_datasets_names": ["x"],
                },
                "options": {"evaluation_datasets_splits": [["validation"], ["test"]]},
            }
        ]
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run_plan.main(["--plan", str(path)]) == 1
    failed = read_json(tmp_path / "out" / "r_'validation'" / "summary.json")
    assert failed["status"] == "failed" and "no split 'validation'" in failed["error"]
    assert "Traceback" in (tmp_path / "out" / "r_'validation'" / "run.log").read_text()
    assert read_json(tmp_path / "out" / "r_'test'" / "summary.json")["status"] == "completed"
    assert "failed" in capsys.readouterr().out


def test_invalid_plan_exits_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "configurations": [
                    {
                        "base_config": {
                            "outputs_dir": str(tmp_path / "out"),
                            "dataset_path": str(tmp_path / "missing"),
                            "epoch": 2,
                        }
                    }
                ]
            }
        )
    )
    assert run_plan.main(["--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'epoch' (did you mean 'epochs'?)" in err and "missing" in err
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_runs_and_folders(plan_file, tmp_path, capsys):
    assert run_plan.main(["--plan", str(plan_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "tiny_gen_rm") in out and "4 run(s)" in out
    assert not (tmp_path / "out").exists()


def test_a_run_is_reproducible_from_its_config_json(plan_file, tmp_path):
    """Same config (seed derived from the run's identity) -> identical metrics, and a run's
    config.json is itself a plan."""
    plan = json.loads(plan_file.read_text())
    plan["configurations"][0]["options"] = {"objective": ["im_rm"]}
    plan_file.write_text(json.dumps(plan))
    assert run_plan.main(["--plan", str(plan_file)]) == 0
    first = read_json(tmp_path / "out" / "tiny_im_rm" / "summary.json")
    config = read_json(tmp_path / "out" / "tiny_im_rm" / "config.json")
    config["outputs_dir"] = str(tmp_path / "again")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert run_plan.main(["--plan", str(tmp_path / "config.json")]) == 0
    second = read_json(tmp_path / "again" / "tiny_im_rm" / "summary.json")
    assert second["random_seed"] == first["random_seed"]
    assert second["last_tracked_values"] == first["last_tracked_values"]


@pytest.mark.parametrize(
    "eval_train_subset, keys", [(True, ["train", "test", "again_test"]), (False, ["test", "again_test"])]
)
def test_eval_train_subset_toggles_the_train_evaluation_set(tmp_path, eval_train_subset, keys):
    from rm_exps.config import RunConfig
    from rm_exps.run_data import evaluation_sets, load_train_test

    data = write_pairs(tmp_path / "pairs")
    config = RunConfig(
        dataset_path=data,
        num_test_samples=2,
        eval_train_subset=eval_train_subset,
        evaluation_datasets_paths=[data],
        evaluation_datasets_names=["again"],
        evaluation_datasets_splits=["test"],
    )
    sets = evaluation_sets(config, *load_train_test(config))
    assert list(sets) == keys
    assert all(len(ds) == 2 for ds in sets.values())
