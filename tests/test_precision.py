"""Training precision: `use_bf16` trains (fp32 master weights under bf16 autocast), pure-bf16 weights
only on request, and the resolution rules of `precision: auto`."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_runner import write_pairs

import run_plan
from rm_exps.models import resolve_model_path
from rm_exps.outputs import read_json
from rm_exps.precision import resolve_precision


def test_auto_resolves_from_use_bf16_then_the_launch(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", use_bf16=False).name == "fp32"
    assert resolve_precision("auto", use_bf16=True).name == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # e.g. a DeepSpeed config with bf16
    assert resolve_precision("auto", use_bf16=False).name == "bf16"
    assert resolve_precision("fp32", use_bf16=True).name == "fp32"  # an explicit precision wins
    bf16, pure = resolve_precision("bf16", False), resolve_precision("bf16_pure", False)
    assert (bf16.mixed_precision, bf16.weights_dtype, bf16.frozen_dtype) == ("bf16", torch.float32, torch.bfloat16)
    assert (pure.mixed_precision, pure.weights_dtype) == ("no", torch.bfloat16)


def one_step_run(tmp_path, name: str, **fields) -> tuple[dict, dict[str, torch.Tensor]]:
    """One optimizer step (IM-RM at lr 1e-5 unless `fields` say otherwise) on the tiny model, all 8
    pairs in one batch; returns the summary and the saved model's weights."""
    data = write_pairs(tmp_path / f"pairs_{name}", n_train=8, n_test=4)
    base = {
        "experiment_name": name,
        "model": "tiny-random-llama",
        "objective": "im_rm",
        "dataset_path": data,
        "outputs_dir": str(tmp_path / "out"),
        "data_files_dir": str(tmp_path / "data_files"),
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-5,
        "num_test_samples": 4,
        "random_seed": 3,
        "save_model": True,
        **fields,
    }
    plan = tmp_path / f"{name}.json"
    plan.write_text(json.dumps({"name": name, "configurations": [{"base_config": base}]}))
    assert run_plan.main(["--plan", str(plan)]) == 0
    folder = tmp_path / "out" / name
    return read_json(folder / "summary.json"), load_file(str(folder / "model" / "model.safetensors"))


def fraction_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Share of the entries that moved, over every weight but the input embeddings (whose rows for
    tokens absent from the batch get no gradient)."""
    moved = total = 0
    for name, old in before.items():
        if "embed_tokens" in name:
            continue
        new = after[name][: old.shape[0]]  # rows of the tokens the tokenizer fix-ups added are new
        moved += int((new != old.to(new.dtype)).sum())  # bf16 weights: against the start rounded to bf16
        total += old.numel()
    return moved / total


@pytest.fixture(scope="module")
def initial_weights():
    return load_file(f"{resolve_model_path('tiny-random-llama')}/model.safetensors")


def test_use_bf16_at_lr_1e5_moves_most_weights_and_tracks_fp32(tmp_path, initial_weights):
    """The reference's `use_bf16: true` is bf16 mixed precision: fp32 master weights take the small
    Adam step, while the loss is computed under bf16 autocast (close to, not equal to, fp32)."""
    summary, weights = one_step_run(tmp_path, "mixed", use_bf16=True)
    assert summary["status"] == "completed" and summary["environment"]["precision"] == "bf16"
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert fraction_changed(initial_weights, weights) > 0.9


def test_bf16_mixed_tracks_fp32_within_bf16_tolerance(tmp_path):
    """The same EX-RM step in bf16 mixed and in fp32: values agree to bf16 accuracy, and differ (the
    forward really ran under bf16 autocast)."""
    mixed, _ = one_step_run(tmp_path, "mixed", objective="ex_rm", precision="bf16")
    fp32, _ = one_step_run(tmp_path, "fp32", objective="ex_rm")
    assert fp32["environment"]["precision"] == "fp32"
    for metric in ("train loss", "train chosen rewards", "eval test loss", "eval test chosen reward"):
        a, b = (s["last_tracked_values"][metric]["value"] for s in (mixed, fp32))
        assert a == pytest.approx(b, rel=3e-2, abs=1e-3), metric
        assert a != b, metric


def test_pure_bf16_weights_lose_small_updates(tmp_path, initial_weights):
    """`bf16_pure` is the opt-in that keeps the weights in bf16: the same step leaves most of them
    where they were (an update of 1e-5 is below half a bf16 ulp of a 0.02 weight)."""
    summary, weights = one_step_run(tmp_path, "pure", precision="bf16_pure")
    assert summary["status"] == "completed"
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    assert fraction_changed(initial_weights, weights) < 0.5


def test_fp16_without_a_gpu_fails_the_run_with_a_clear_error(tmp_path):
    data = write_pairs(tmp_path / "pairs", n_train=4, n_test=2)
    base = {
        "experiment_name": "fp16",
        "model": "tiny-random-llama",
        "dataset_path": data,
        "precision": "fp16",
        "outputs_dir": str(tmp_path / "out"),
        "num_test_samples": 2,
    }
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"name": "fp16", "configurations": [{"base_config": base}]}))
    assert run_plan.main(["--plan", str(plan)]) == 1
    summary = read_json(tmp_path / "out" / "fp16" / "summary.json")
    assert summary["status"] == "failed" and "precision 'fp16' needs a CUDA GPU" in summary["error"]
