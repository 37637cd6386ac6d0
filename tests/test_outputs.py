"""Run-folder artifacts: atomic writes, score selection, plots, saved models, the config doc."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rm_exps.config import config_doc
from rm_exps.outputs import score_of, write_json_atomic
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
    config = SimpleNamespace(score_metric_name="eval test accuracy", is_train_metric=False, score_largest=True,
                             return_best_score=False)
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
    series = {"train loss": [(0, 0.7), (1, 0.6)], "eval train accuracy": [(0, 0.5), (1, 0.6)],
              "eval test accuracy": [(0, 0.5), (1, 0.55)]}
    paths = save_metric_plots(tmp_path, series)
    assert sorted(p.name for p in paths) == ["eval_accuracy.png", "train_loss.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_config_doc_is_current():
    assert config_doc() == (REPO / "docs" / "CONFIG.md").read_text(), \
        "docs/CONFIG.md is stale: python -m rm_exps.config > docs/CONFIG.md"
