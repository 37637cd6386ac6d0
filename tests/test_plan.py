"""Plan loading, expansion, templating, overrides and up-front validation."""

import json
from pathlib import Path

import pytest

from rm_exps.plan import PlanError, build_runs, expand_configs, parse_overrides, sanitize_name

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_dir(tmp_path):
    """A minimal prepared dataset folder (two jsonl splits) for plans to point at."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(4)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(folder)


def plan_with(base, options=None, **top):
    return {"configurations": [{"base_config": base, "options": options or {}}], **top}


def test_expansion_order_is_cartesian_with_last_key_fastest():
    plan = plan_with({"x": 0}, {"model": ["a", "b"], "objective": ["im_rm", "ex_rm"]})
    configs = expand_configs(plan)
    assert [(c["model"], c["objective"]) for c in configs] == [
        ("a", "im_rm"),
        ("a", "ex_rm"),
        ("b", "im_rm"),
        ("b", "ex_rm"),
    ]


def test_templating_and_name_sanitizing(dataset_dir, tmp_path):
    base = {
        "experiment_name": "uf_{model}_kl_{kl_coeff}_lr_{lr}_[x], y",
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "kl_coeff": 0.01,
        "lr": 1e-6,
        "outputs_dir": str(tmp_path / "out"),
    }
    (run,) = build_runs(plan_with(base))
    assert run.config.experiment_name == "uf_tiny-random-llama_kl_0-01_lr_1e-06_x-y"
    assert run.run_dir == tmp_path / "out" / "uf_tiny-random-llama_kl_0-01_lr_1e-06_x-y"
    assert sanitize_name("meta-llama/Llama-3.2-1B") == "meta-llama-Llama-3-2-1B"


def test_skip_and_repetitions(dataset_dir, tmp_path):
    base = {
        "experiment_name": "r_{objective}",
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "outputs_dir": str(tmp_path),
    }
    runs = build_runs(plan_with(base, {"objective": ["ex_rm", "im_rm", "sft"]}, skip=1, repetitions=2))
    assert [r.name for r in runs] == ["r_im_rm__rep1", "r_im_rm__rep2", "r_sft__rep1", "r_sft__rep2"]
    # random_seed -1 derives a seed per run identity: distinct across repetitions, stable across loads
    assert runs[0].config.random_seed != runs[1].config.random_seed
    assert (
        runs[0].config.random_seed
        == build_runs(plan_with(base, {"objective": ["ex_rm", "im_rm", "sft"]}, skip=1, repetitions=2))[
            0
        ].config.random_seed
    )


def test_what_a_repetition_varies(dataset_dir, tmp_path):
    base = {
        "experiment_name": "r_{objective}",
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "outputs_dir": str(tmp_path),
        "dataset_prep_random_seed": 517,
    }
    options = {"objective": ["ex_rm", "im_rm"]}

    def seeds(**top):
        runs = build_runs(plan_with(base, options, repetitions=3, **top))
        return [(r.name, r.config.random_seed, r.config.dataset_prep_random_seed) for r in runs]

    default = seeds()  # the training seed varies, the data subsample does not
    assert len({seed for _, seed, _ in default}) == 6 and {data for *_, data in default} == {517}
    both = seeds(repetition_varies=["seed", "data"])
    assert [s for _, s, _ in both] == [s for _, s, _ in default]
    # the data seed depends on the repetition only: ex_rm and im_rm of one repetition see the same pairs
    assert [(name[-4:], data) for name, _, data in both] == [
        ("rep1", 517), ("rep2", 518), ("rep3", 519), ("rep1", 517), ("rep2", 518), ("rep3", 519)
    ]  # fmt: skip
    data_only = seeds(repetition_varies=["data"])
    assert len({s for _, s, _ in data_only[:3]}) == 1 and [d for *_, d in data_only[:3]] == [517, 518, 519]
    base["random_seed"] = 5  # an explicit seed: s, s + 1, ...
    assert [s for _, s, _ in seeds()[:3]] == [5, 6, 7]
    with pytest.raises(PlanError, match="'repetition_varies' must be a non-empty list of 'seed', 'data'"):
        build_runs(plan_with(base, options, repetitions=2, repetition_varies=["dropout"]))


def test_overrides_apply_before_options_and_templating(dataset_dir, tmp_path):
    base = {
        "experiment_name": "e{epochs}_{objective}",
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "outputs_dir": str(tmp_path),
    }
    overrides = parse_overrides(["epochs=3", "objective=sft", "use_bf16=True", "evaluation_datasets_names=a,b"])
    assert overrides["epochs"] == 3 and overrides["use_bf16"] is True
    runs = build_runs(plan_with(base, {"objective": ["ex_rm"]}), {"epochs": 3, "objective": "sft"})
    assert runs[0].config.epochs == 3
    assert runs[0].config.objective == "ex_rm"  # options win over overrides, as in the reference
    assert runs[0].name == "e3_ex_rm"


def test_reference_aliases_are_accepted(dataset_dir, tmp_path):
    base = {
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "outputs_dir": str(tmp_path),
        "evaluation_datasets_paths": [dataset_dir],
        "evaluation_datasets_names": ["x"],
        "evalution_datasets_splits": ["test"],
        "wandb_resume_path": "",
    }
    (run,) = build_runs(plan_with(base))
    assert run.config.evaluation_datasets_splits == ["test"]


def test_all_validation_errors_reported_together(dataset_dir, tmp_path):
    base = {
        "model": "tiny-random-llama",
        "dataset_path": dataset_dir,
        "outputs_dir": str(tmp_path),
        "experiment_name": "{objective}_{lr}",
    }
    bad = plan_with(base, {"objective": ["ex_rm", "im_rmm"], "lr": ["fast"]})
    bad["configurations"][0]["base_config"].update(
        {
            "learning_rate": 1.0,
            "optimizer": "adagrad",
            "evaluation_datasets_paths": [str(tmp_path / "missing")],
            "evaluation_datasets_names": ["a", "b"],
            "evaluation_datasets_splits": ["test"],
        }
    )
    with pytest.raises(PlanError) as info:
        build_runs(bad)
    text = "\n".join(info.value.errors)
    assert "unknown field 'learning_rate' (did you mean 'lr'?)" in text
    assert "field 'lr'" in text  # wrong type
    assert "field 'optimizer'" in text
    assert "same length" in text  # mismatched evaluation lists
    # both expanded runs are reported
    assert "run 1 (ex_rm_fast)" in text and "run 2 (im_rmm_fast)" in text


def test_unknown_objective_missing_dataset_and_plan_key(tmp_path):
    plan = plan_with(
        {"objective": "im_rmm", "dataset_path": str(tmp_path / "nope"), "model": "tiny-random-llama"}, repetitons=2
    )
    with pytest.raises(PlanError) as info:
        build_runs(plan)
    text = "\n".join(info.value.errors)
    assert "unknown plan key 'repetitons' (did you mean 'repetitions'?)" in text
    plan.pop("repetitons")
    with pytest.raises(PlanError) as info:
        build_runs(plan)
    text = "\n".join(info.value.errors)
    assert "unknown objective 'im_rmm' (did you mean 'im_rm'?)" in text
    assert "dataset_path" in text and "nope" in text


def test_template_with_unknown_field_is_an_error(dataset_dir):
    with pytest.raises(PlanError, match="unknown field 'modle'"):
        build_runs(plan_with({"experiment_name": "{modle}", "dataset_path": dataset_dir}))


def test_two_runs_in_one_folder_is_an_error(dataset_dir, tmp_path):
    plan = plan_with(
        {
            "experiment_name": "same",
            "dataset_path": dataset_dir,
            "model": "tiny-random-llama",
            "outputs_dir": str(tmp_path),
        },
        {"objective": ["ex_rm", "im_rm"]},
    )
    with pytest.raises(PlanError, match="same folder"):
        build_runs(plan)


@pytest.mark.parametrize("plan_file", sorted((REPO / "experiment_plans").rglob("*.json")), ids=lambda p: p.name)
def test_shipped_plans_validate(plan_file, monkeypatch):
    """Every shipped plan expands and validates (recipes instead of hand-filled paths); the rewritten
    UltraFeedback sets need an API key (checked below), here a dummy one."""
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    runs = build_runs(json.loads(plan_file.read_text()))
    assert runs


def test_a_rewrite_recipe_without_api_key_is_a_plan_error(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = REPO / "experiment_plans/rewritten_responses/single_gpu_uf_reward_model_experiment.json"
    with pytest.raises(PlanError) as e:
        build_runs(json.loads(plan.read_text()), {"data_files_dir": str(tmp_path)})
    assert sum("set OPENAI_API_KEY" in err for err in e.value.errors) == 3
