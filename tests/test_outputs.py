"""Run-folder artifacts: atomic writes, score selection, plots, saved models, the config doc, the
code version in summaries."""

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import rm_exps
from rm_exps.config import config_doc
from rm_exps.outputs import build_summary, code_version, environment, score_of, write_json_atomic
from rm_exps.plots import metric_tag, save_metric_plots

REPO = Path(__file__).resolve().parents[1]


def test_atomic_write_leaves_no_temp_file_and_writes_nan_as_string(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"score": float("nan"), "ok": [1.0]})
    assert json.loads(path.read_text()) == {"score": "nan", "ok": [1.0]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["ok"] == [1.0]  # the previous file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_score_last_or_best():
    evals = {"eval test accuracy": [(0, 0.6), (1, 0.8), (2, 0.7)]}
    config = SimpleNamespace(
        score_metric_name="eval test accuracy", is_train_metric=False, score_largest=True, return_best_score=False
    )
    assert score_of(config, {}, evals) == (0.7, 2)
    config.return_best_score = True
    assert score_of(config, {}, evals) == (0.8, 1)
    config.score_largest = False
    assert score_of(config, {}, evals) == (0.6, 0)
    config.score_metric_name = "eval missing"
    assert score_of(config, {}, evals) == (None, None)


def test_metric_tags_group_datasets_and_sides():
    assert metric_tag("eval paraphrase_test chosen reward") == "eval reward"
    assert metric_tag("eval test normalized abs reward margin") == "eval normalized abs reward margin"
    assert metric_tag("train chosen rewards") == "train rewards"
    assert metric_tag("train loss") == "train loss"
    assert metric_tag("eval test not really reward") == "eval paraphrased responses reward"
    assert metric_tag("eval train certainly reward") == "eval paraphrased responses reward"
    assert metric_tag("eval test paraphrased responses accuracy") == "eval paraphrased responses accuracy"


def test_plots_are_written_per_tag(tmp_path):
    series = {
        "train loss": [(0, 0.7), (1, 0.6)],
        "eval train accuracy": [(0, 0.5), (1, 0.6)],
        "eval test accuracy": [(0, 0.5), (1, 0.55)],
    }
    paths = save_metric_plots(tmp_path, series)
    assert sorted(p.name for p in paths) == ["eval_accuracy.png", "train_loss.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_config_doc_is_current():
    assert config_doc() == (REPO / "docs" / "CONFIG.md").read_text(), (
        "docs/CONFIG.md is stale: python -m rm_exps.config > docs/CONFIG.md"
    )


def test_environment_records_the_code_version():
    env = environment("cpu", 1)["rm_exps"]
    assert env["version"] == rm_exps.__version__
    if shutil.which("git") and (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert env["git_commit"] == head.strip() and isinstance(env["git_dirty"], bool)
    assert code_version() is code_version()  # asked once per process


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_code_version_in_a_checkout_and_outside_one(tmp_path, monkeypatch):
    version = code_version.__wrapped__  # uncached
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert version(repo) == {"version": rm_exps.__version__, "git_commit": head, "git_dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert version(repo)["git_dirty"] is True

    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # do not find a repository above tmp_path
    assert version(outside) == {"version": rm_exps.__version__}
    monkeypatch.setenv("PATH", str(tmp_path / "no_git_here"))
    assert version(repo) == {"version": rm_exps.__version__}


def test_summary_of_a_run_that_failed_before_training_reports_what_it_reached():
    """build_summary reads the RunState: counts known before the failure, zero timings without a trainer."""
    import torch

    from rm_exps.config import RunConfig
    from rm_exps.run import RunState

    accelerator = SimpleNamespace(
        device=torch.device("cpu"),
        num_processes=1,
        distributed_type=SimpleNamespace(value="NO"),
        state=SimpleNamespace(deepspeed_plugin=None),
    )
    run = RunState(counts={"num_train_samples": 8, "num_test_samples": 4})
    run.precompute_s = 0.25
    summary = build_summary(RunConfig(), run, "failed", "ValueError: no pairs", accelerator)
    assert summary["status"] == "failed" and summary["error"] == "ValueError: no pairs"
    assert (summary["num_train_samples"], summary["num_test_samples"]) == (8, 4)
    assert summary["score"] is None and summary["last_epoch"] == -1
    assert (summary["train_s"], summary["eval_s"], summary["precompute_s"], summary["train_tokens"]) == (0, 0, 0.25, 0)
    assert summary["train_tokens_per_s"] is None and summary["padding_fraction"] is None
    assert summary["environment"]["zero_stage"] is None and summary["environment"]["num_processes"] == 1
    assert list(summary)[:5] == ["last_epoch", "score_name", "score_largest", "is_train_metric", "last_tracked_values"]
