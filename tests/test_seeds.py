"""Everything that draws random numbers for a run draws the same ones whatever was cached before:
building a built-in model on first use must not consume the run's seeded streams."""

import json
import random

import numpy as np
import pytest
import torch
from test_runner import write_pairs

import run_plan
from rm_exps import models
from rm_exps.outputs import read_json


def test_building_a_builtin_model_leaves_every_random_stream_where_it_was(monkeypatch, tmp_path):
    def hungry_builder(folder):  # as a GGUF conversion or a random init would, it draws numbers
        torch.rand(100), random.random(), np.random.rand(3)
        (folder / "config.json").write_text("{}")

    monkeypatch.setitem(models.BUILTIN_MODELS, "hungry", hungry_builder)
    monkeypatch.setenv("RM_EXPS_CACHE", str(tmp_path))
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    models.resolve_model_path("hungry")  # built now
    after_build = (torch.rand(1).item(), random.random(), float(np.random.rand()))
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    models.resolve_model_path("hungry")  # cached
    assert (torch.rand(1).item(), random.random(), float(np.random.rand())) == after_build


def test_a_run_computes_the_same_with_an_empty_and_a_full_model_cache(monkeypatch, tmp_path):
    data = write_pairs(tmp_path / "pairs", n_train=6, n_test=4)
    base = {
        "experiment_name": "seeded",
        "model": "tiny-random-llama",
        "objective": "ex_rm",
        "dataset_path": data,
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-3,
        "num_test_samples": 4,
        "random_seed": 5,
        "data_files_dir": str(tmp_path / "data_files"),
    }
    monkeypatch.setenv("RM_EXPS_CACHE", str(tmp_path / "cache"))  # empty: the model is built during the run
    summaries = []
    for attempt in ("empty", "full"):
        plan = tmp_path / f"{attempt}.json"
        plan.write_text(
            json.dumps(
                {"name": attempt, "configurations": [{"base_config": {**base, "outputs_dir": str(tmp_path / attempt)}}]}
            )
        )
        assert run_plan.main(["--plan", str(plan)]) == 0
        summaries.append(read_json(tmp_path / attempt / "seeded" / "summary.json"))
    empty, full = ({k: v["value"] for k, v in s["last_tracked_values"].items()} for s in summaries)
    assert empty == pytest.approx(full, rel=0, abs=0)
