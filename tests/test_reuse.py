"""Which finished runs are reused: the config.json a run recorded, compared field by field with the
run's config now (no model runs: the run folders are written by hand)."""

import json
from pathlib import Path

import pytest
from test_runner import write_pairs

import run_plan
from rm_exps.config import PRESENTATION_FIELDS, BestOfNSection, RunConfig, flat_defaults
from rm_exps.plan import PlanError, RunSpec
from rm_exps.sweep import finished_summary, preflight, run_status, stale_reasons


def finished_run(
    tmp_path: Path, recorded: dict | str | None, config: RunConfig | None = None, status: str = "completed"
) -> RunSpec:
    """A run folder holding a finished summary and `recorded` as its config.json (a str is written
    as is; None: no config.json); the spec is `config` (default: every field at its default)."""
    config = config or RunConfig(experiment_name="r", outputs_dir=str(tmp_path))
    spec = RunSpec(config, 1, 1, tmp_path / "r")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    # config_hash as the code that wrote the run would have computed it: the hash alone cannot tell.
    (spec.run_dir / "summary.json").write_text(
        json.dumps({"status": status, "score": 0.5, "config_hash": config.hash()})
    )
    if recorded is not None:
        (spec.run_dir / "config.json").write_text(recorded if isinstance(recorded, str) else json.dumps(recorded))
    return spec


def recorded_now(config: RunConfig | None = None, **changes) -> dict:
    """config.json as the run writes it (the flat view), with some values changed."""
    return {**(config or RunConfig(experiment_name="r")).flat(), **changes}


def assert_stale(spec: RunSpec, reasons: list[str]) -> None:
    assert stale_reasons(spec) == reasons
    assert finished_summary(spec) is None
    with pytest.raises(PlanError) as e:
        preflight([spec], rerun=False)
    assert e.value.errors == [
        f"run 1 (r): {spec.run_dir} holds a finished run with another config "
        f"({'; '.join(reasons)}); pass --rerun to replace it or change experiment_name/outputs_dir"
    ]
    preflight([spec], rerun=True)
    state, detail = run_status(spec)
    assert state == "stale" and detail.startswith("finished with another config: " + reasons[0]), detail


def assert_reused(spec: RunSpec) -> None:
    assert stale_reasons(spec) == []
    assert finished_summary(spec)["status"] == "completed"
    preflight([spec], rerun=False)
    assert run_status(spec) == ("completed", "")


def test_the_config_json_a_run_writes_is_reused(tmp_path):
    config = RunConfig(
        experiment_name="r",
        outputs_dir=str(tmp_path),
        lr=1e-3,
        bon_n=[8, 2],
        evaluation_datasets_paths=["a"],
        evaluation_datasets_names=["a"],
        evaluation_datasets_splits=["test"],
    )
    assert_reused(finished_run(tmp_path, recorded_now(config), config))


def test_a_changed_default_makes_a_finished_run_stale(tmp_path):
    """The run finished when the default was 16; the default is 32 now. config_hash leaves fields at
    their default out, so it is the same before and after; the recorded config.json is not."""
    assert flat_defaults()["ham_cycle_gen_batch_size"] == 32
    assert_stale(
        finished_run(tmp_path, recorded_now(ham_cycle_gen_batch_size=16)), ["ham_cycle_gen_batch_size: 16 -> 32"]
    )


def test_changing_a_default_in_code_makes_finished_runs_stale(tmp_path):
    spec = finished_run(tmp_path, recorded_now())
    assert_reused(spec)
    recorded_hash = spec.config.hash()
    field = BestOfNSection.model_fields["max_new_tokens"]  # bon_max_new_tokens
    old = field.default
    try:
        field.default = 256
        BestOfNSection.model_rebuild(force=True)
        RunConfig.model_rebuild(force=True)
        config = RunConfig(experiment_name="r", outputs_dir=str(tmp_path))
        assert config.hash() == recorded_hash  # what the hash alone would have reused
        assert_stale(RunSpec(config, 1, 1, spec.run_dir), ["bon_max_new_tokens: 128 -> 256"])
    finally:
        field.default = old
        BestOfNSection.model_rebuild(force=True)
        RunConfig.model_rebuild(force=True)
    assert RunConfig().best_of_n.max_new_tokens == old


def test_a_field_config_json_did_not_record_counts_only_at_its_default(tmp_path):
    old = recorded_now()
    del old["judge_max_answer_tokens"], old["lora_r"]  # fields added after the run finished
    assert_reused(finished_run(tmp_path, old))
    changed = RunConfig(experiment_name="r", outputs_dir=str(tmp_path), judge_max_answer_tokens=64)
    assert_stale(finished_run(tmp_path, old, changed), ["judge_max_answer_tokens: <not recorded> -> 64"])


def test_presentation_fields_never_make_a_run_stale(tmp_path):
    old = recorded_now(
        outputs_dir="elsewhere",
        gpu_ids=[2, 3],
        use_wandb=True,
        save_model=True,
        wandb_exclude_files=["*"],
        model_cache_dir="/cache",
        cache_reference_logps=False,
    )
    del old["save_logs"], old["train_batch_log_interval"], old["wandb_resume_id"]
    old["wandb_resume_path"] = "abc"  # an alias of a presentation field
    old["gpu_ids"] = "not even a list"  # presentation values are not validated either
    assert_reused(finished_run(tmp_path, old))
    # Every presentation field, changed in the config now, leaves the run reused.
    changed = RunConfig(
        experiment_name="r",
        outputs_dir=str(tmp_path),
        disable_console_log=True,
        save_logs=False,
        train_batch_log_interval=3,
        epoch_log_interval=2,
        save_metric_plots=True,
        save_every_num_val=4,
        use_tensorboard=True,
        use_wandb=True,
        wandb_project_name="p",
        wandb_entity_name="e",
        wandb_track_model="all",
        wandb_exclude_files=[],
        wandb_resume_id="x",
        gpu_ids=[1],
        model_cache_dir="/m",
        data_files_dir="/d",
        save_model=True,
        cache_reference_logps=False,
        checkpoint_every_steps=5,
        checkpoint_keep=3,
    )
    assert all(changed.flat()[k] != flat_defaults()[k] for k in PRESENTATION_FIELDS)
    assert_reused(finished_run(tmp_path, recorded_now(), changed))


def test_aliases_and_validated_values_are_never_spuriously_stale(tmp_path):
    config = RunConfig(
        experiment_name="r",
        outputs_dir=str(tmp_path),
        lr=1e-6,
        kl_coeff=1.0,
        bon_n=[1, 4, 16],
        gradient_accumulation_steps=1,
        evaluation_datasets_paths=[{"name": "x", "sizes": (1, 2)}],
        evaluation_datasets_names=["x"],
        evaluation_datasets_splits=("test",),
        lora_target_modules=("q_proj", "v_proj"),
        agentic={"data": "f", "verifiers": ("factuality",), "judger": {"rm_weight": 2.0}},  # typed since the sections
    )
    old = recorded_now(
        config,
        bon_n=[16, 4, 1, 4],
        gradient_accumulation_steps=0,
        kl_coeff=1,
        lora_target_modules=["q_proj", "v_proj"],
        agentic={"judger": {"rm_weight": 2}, "verifiers": ["factuality"], "data": "f"},
    )
    old["evalution_datasets_splits"] = old.pop("evaluation_datasets_splits")  # the reference's misspelling
    text = json.dumps(old).replace('"lr": 1e-06', '"lr": 0.000001')
    assert '"lr": 0.000001' in text
    assert_reused(finished_run(tmp_path, text, config))


def test_a_recorded_value_that_no_longer_validates_is_stale(tmp_path):
    assert_stale(
        finished_run(tmp_path, recorded_now(bon_n=[0, 2], lr="fast")),
        ["bon_n: [0, 2] -> [1, 2, 4, 8, 16]", "lr: 'fast' -> 1e-06"],
    )


def test_a_recorded_field_the_code_no_longer_knows_is_stale(tmp_path):
    old = {**recorded_now(), "old_knob": 3}
    assert_stale(finished_run(tmp_path, old), ["old_knob: 3 -> <no such field now>"])


def test_use_bf16_recorded_before_precision_existed_is_stale(tmp_path):
    """use_bf16 used to train pure-bf16 weights; with precision 'auto' it now means mixed bf16."""
    config = RunConfig(experiment_name="r", outputs_dir=str(tmp_path), use_bf16=True)
    before_precision = recorded_now(config)
    del before_precision["precision"]
    assert_stale(
        finished_run(tmp_path, before_precision, config),
        ["precision: <not recorded; use_bf16 then trained pure bf16> -> 'auto'"],
    )
    assert_reused(finished_run(tmp_path, recorded_now(config), config))  # recorded with precision 'auto'
    without_bf16 = recorded_now()
    del without_bf16["precision"]
    assert_reused(finished_run(tmp_path, without_bf16))  # fp32 then and now


def test_a_finished_run_without_config_json_is_stale(tmp_path):
    assert_stale(finished_run(tmp_path, None), ["unknown (no config.json)"])
    assert_stale(finished_run(tmp_path, "{not json"), ["unknown (no config.json)"])


def test_status_of_failed_runs(tmp_path):
    spec = finished_run(tmp_path, None, status="failed")
    assert run_status(spec) == ("failed", "")  # died before writing config.json
    spec = finished_run(tmp_path, recorded_now(lr=0.5), status="failed")
    assert run_status(spec) == ("stale", "failed with another config: lr: 0.5 -> 1e-06")
    assert stale_reasons(spec) and finished_summary(spec) is None
    preflight([spec], rerun=False)  # a failed run simply runs again


def test_the_cli_reports_a_stale_run_and_reuses_a_current_one(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs")
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "configurations": [
                    {
                        "base_config": {
                            "experiment_name": "r",
                            "model": "tiny-random-llama",
                            "dataset_path": data,
                            "outputs_dir": str(tmp_path / "out"),
                            "random_seed": 3,
                        }
                    }
                ]
            }
        )
    )
    config = RunConfig(
        experiment_name="r",
        model="tiny-random-llama",
        dataset_path=data,
        outputs_dir=str(tmp_path / "out"),
        random_seed=3,
    )
    spec = finished_run(tmp_path / "out", recorded_now(config, ham_cycle_gen_batch_size=16), config)

    assert run_plan.main(["--plan", str(plan), "--status"]) == 0
    assert "stale" in capsys.readouterr().out
    assert run_plan.main(["--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run with another config (ham_cycle_gen_batch_size: 16 -> 32); pass --rerun" in err

    (spec.run_dir / "config.json").write_text(json.dumps(recorded_now(config)))
    assert run_plan.main(["--plan", str(plan), "--status"]) == 0
    assert "completed" in capsys.readouterr().out
    assert run_plan.main(["--plan", str(plan)]) == 0  # nothing to run: the finished run is reused
    assert "skipped (completed)" in capsys.readouterr().out
