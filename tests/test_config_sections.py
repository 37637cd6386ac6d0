"""The config's sections: a sectioned field given by its flat (reference) name or nested, never both;
`--set` with either spelling; the flat view (hash, config.json) the same either way; unknown keys of a
section named with the closest one; rules reported alongside the type errors of the same run."""

import json

import pytest

from rm_exps.config import FLAT_NAMES, SECTIONS, RunConfig, flat_defaults
from rm_exps.plan import PlanError, build_runs, parse_overrides


@pytest.fixture
def base(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(4)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {"model": "tiny-random-llama", "dataset_path": str(folder), "outputs_dir": str(tmp_path / "out")}


def plan_with(base, options=None):
    return {"configurations": [{"base_config": base, "options": options or {}}]}


def errors_of(plan, overrides=None) -> str:
    with pytest.raises(PlanError) as info:
        build_runs(plan, overrides)
    return "\n".join(info.value.errors)


def test_the_table_covers_every_section_field_once():
    places = {(section, name) for section, model in SECTIONS.items() for name in model.model_fields}
    assert set(FLAT_NAMES.values()) == places and len(FLAT_NAMES) == len(places)
    assert set(flat_defaults()) & set(SECTIONS) == set()  # the flat view names no section


def test_flat_and_nested_spellings_are_the_same_run(base):
    (flat,) = build_runs(plan_with({**base, "lora_r": 8, "bon_n": [4, 2], "judge_model": "tiny-random-llama"}))
    (nested,) = build_runs(
        plan_with({**base, "lora": {"r": 8}, "best_of_n": {"n": [4, 2], "judge_model": "tiny-random-llama"}})
    )
    assert flat.config.lora.r == nested.config.lora.r == 8
    assert flat.config.best_of_n.n == [2, 4]
    assert flat.config.flat() == nested.config.flat() and flat.config.hash() == nested.config.hash()
    assert flat.config.flat()["lora_r"] == 8 and "lora" not in flat.config.flat()
    assert RunConfig.model_validate(flat.config.flat()) == flat.config  # config.json reloads to the same config


def test_a_field_given_both_ways_is_an_error_naming_both(base):
    text = errors_of(plan_with({**base, "lora_r": 8, "lora": {"r": 4}}))
    assert "'lora_r' and 'lora.r'" in text


def test_set_takes_a_dotted_or_a_flat_name_and_replaces_either_spelling(base):
    (run,) = build_runs(plan_with({**base, "lora_r": 8}), parse_overrides(["lora.r=16"]))
    assert run.config.lora.r == 16
    (run,) = build_runs(plan_with({**base, "lora": {"r": 8}}), parse_overrides(["lora_r=16"]))
    assert run.config.lora.r == 16
    (run,) = build_runs(plan_with(base), parse_overrides(["best_of_n.n=1,3", "tracking.wandb_exclude_files=a,b"]))
    assert run.config.best_of_n.n == [1, 3] and run.config.tracking.wandb_exclude_files == ["a", "b"]


def test_unknown_keys_of_a_section_name_the_closest(base):
    text = errors_of(plan_with({**base, "lora": {"rr": 8}, "best_of_n": {"polcy": "x"}, "lora_dropuot": 0.1}))
    assert "unknown field 'lora.rr' (did you mean 'lora.r'?)" in text
    assert "unknown field 'best_of_n.polcy' (did you mean 'best_of_n.policy'?)" in text
    assert "unknown field 'lora_dropuot' (did you mean 'lora_dropout'?)" in text


def test_type_errors_name_the_field_as_the_plan_gave_it(base):
    text = errors_of(plan_with({**base, "lora_r": "big", "best_of_n": {"top_p": 2}}))
    assert "field 'lora_r': " in text and "field 'best_of_n.top_p': " in text


def test_rules_run_on_the_values_that_validated(base):
    """A type error and a rule of the same run are both reported: the rules see the other values."""
    text = errors_of(plan_with({**base, "lr": "fast", "dpo_pairs_num_prompts": 5, "epochs": -1}))
    assert "field 'lr'" in text and "field 'epochs'" in text
    assert "dpo_pairs_num_prompts needs bon_policy" in text


def test_agentic_settings_are_typed_and_recorded_as_given(base, tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"instruction": "q", "candidates": ["a", "b"], "label": 0}) + "\n")
    settings = {"data": str(items), "verifiers": [], "llm": {"timeout": 60}}
    (run,) = build_runs(plan_with({**base, "agentic": settings}))
    assert run.config.agentic.llm.timeout == 60.0 and run.config.agentic.verifiers == []
    assert run.config.flat()["agentic"] == settings  # as given: the config hash of the reference plan is kept
    text = errors_of(plan_with({**base, "agentic": {**settings, "llm": {"modle": "x"}}}))
    assert "agentic.llm.modle: unknown key (did you mean 'model'?)" in text
