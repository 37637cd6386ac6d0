"""Whole plans through run_plan.main: saved models, Persona runs, recipes, the real SmolLM2."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import run_plan
from rm_exps.outputs import read_json

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PERSONA = SHARED / "persona" / "agreeableness.jsonl"


def run(tmp_path, base, options=None, name="plan.json"):
    plan = {
        "configurations": [
            {
                "base_config": {
                    "outputs_dir": str(tmp_path / "out"),
                    "epochs": 1,
                    "data_files_dir": str(tmp_path / "data_files"),
                    **base,
                },
                "options": options or {},
            }
        ]
    }
    path = tmp_path / name
    path.write_text(json.dumps(plan))
    return run_plan.main(["--plan", str(path)])


def ham_recipe(**kw):
    return {
        "name": "hamiltonian_cycle",
        "num_vertices": 5,
        "edge_p": 0.3,
        "num_train_graphs": 20,
        "num_test_graphs": 8,
        "num_train_samples": 8,
        "num_test_samples": 4,
        **kw,
    }


def test_recipe_dataset_and_saved_ex_rm_reload(tmp_path):
    assert (
        run(
            tmp_path,
            {
                "experiment_name": "ham",
                "model": "tiny-random-llama",
                "objective": "ex_rm",
                "dataset_path": ham_recipe(),
                "is_ham_cycle_task": True,
                "batch_size": 4,
                "save_model": True,
                "save_metric_plots": True,
            },
        )
        == 0
    )
    prepared = list((tmp_path / "data_files").iterdir())
    assert len(prepared) == 1 and (prepared[0] / "run_config.json").exists()
    folder = tmp_path / "out" / "ham"
    assert read_json(folder / "summary.json")["num_train_samples"] == 8
    assert (folder / "plots" / "eval_accuracy.png").exists()
    # the saved model reloads with its tokenizer (added <sep> tokens included) and scores the same
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    assert len(tokenizer("<sep>", add_special_tokens=False)["input_ids"]) == 1
    model = AutoModelForSequenceClassification.from_pretrained(folder / "model")
    assert model.score.weight.shape[0] == 1
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


@pytest.mark.skipif(not PERSONA.exists(), reason=f"shared Persona data not found at {PERSONA}")
def test_persona_run_builds_pairs_from_records(tmp_path):
    assert (
        run(
            tmp_path,
            {
                "experiment_name": "persona_{objective}",
                "model": "tiny-random-llama",
                "dataset_path": str(PERSONA),
                "answer_matching_behavior_to_use": "Yes",
                "num_train_samples": 8,
                "num_test_samples": 4,
                "dataset_prep_random_seed": 875,
                "batch_size": 4,
            },
            {"objective": ["ex_rm", "gen_rm"]},
        )
        == 0
    )
    summary = read_json(tmp_path / "out" / "persona_ex_rm" / "summary.json")
    assert summary["num_train_samples"] == 8 and summary["num_test_samples"] == 4
    log = (tmp_path / "out" / "persona_ex_rm" / "run.log").read_text()
    assert "Is the following statement something you would say?" in log  # the Persona question is the prompt


@pytest.mark.smollm
def test_builtin_smollm2_on_a_handful_of_pairs(tmp_path):
    """The real offline model, EX-RM and IM-RM, 4 Hamiltonian-cycle pairs, one epoch (IM-RM also
    samples cycles from its policy)."""
    assert (
        run(
            tmp_path,
            {
                "experiment_name": "smol_{objective}",
                "model": "smollm2-135m-instruct",
                "dataset_path": ham_recipe(num_train_samples=4, num_test_samples=2),
                "is_ham_cycle_task": True,
                "batch_size": 2,
                "lr": 1e-5,
                "num_test_samples": 2,
                "ham_cycle_gen_max_new_tokens": 12,
            },
            {"objective": ["ex_rm", "im_rm"]},
        )
        == 0
    )
    for objective in ("ex_rm", "im_rm"):
        summary = read_json(tmp_path / "out" / f"smol_{objective}" / "summary.json")
        assert summary["status"] == "completed"
        values = summary["last_tracked_values"]
        assert 0.0 <= values["eval test accuracy"]["value"] <= 1.0
        assert summary["train_tokens"] > 0 and summary["environment"]["device"] == "cpu"
    # IM-RM starts at the reference (reward exactly 0); after two small steps rewards are small, not zero.
    im = read_json(tmp_path / "out" / "smol_im_rm" / "summary.json")["last_tracked_values"]
    assert 0 < abs(im["eval train chosen reward"]["value"]) < 1.0
    assert 0.0 <= im["eval test ham cycle gen accuracy"]["value"] <= 1.0
