"""Bad input is a plan error (exit 2, the file / line / field named, no traceback, nothing written),
found by validation, so `--dry-run` catches it before any compute (issue 17, part 2)."""

import json
import logging
import math
from pathlib import Path

import pytest

import run_plan
from rm_exps.data import checks

GOOD = {"prompt": "q", "chosen": "good", "rejected": "bad"}


def write_jsonl(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def pair_folder(tmp_path, train=None, test=None, name="pairs") -> str:
    folder = tmp_path / name
    write_jsonl(folder / "train.jsonl", train if train is not None else [GOOD] * 3)
    if test is not False:
        write_jsonl(folder / "test.jsonl", test if test is not None else [GOOD] * 2)
    return str(folder)


def dry_run(tmp_path, capsys, base=None, expect=2, raw=None, **top) -> str:
    """Run `run_plan.main([--plan P --dry-run])`; returns stderr (exit 2) or stdout (exit 0)."""
    config = {
        "experiment_name": "bad_{objective}",
        "model": "tiny-random-llama",
        "objective": "ex_rm",
        "outputs_dir": str(tmp_path / "out"),
        **(base or {}),
    }
    if "dataset_path" not in config:
        config["dataset_path"] = pair_folder(tmp_path, name="default_pairs")
    plan = tmp_path / "plan.json"
    if raw is not None:
        plan.write_bytes(raw)
    else:
        plan.write_text(json.dumps({"configurations": [{"base_config": config}], **top}))
    logger = logging.getLogger("rm_exps")
    before = list(logger.handlers)
    for handler in before:  # main installs a console handler on the stream capsys gives this test
        if getattr(handler, "rm_exps_console", False):
            logger.removeHandler(handler)
    try:
        code = run_plan.main(["--plan", str(plan), "--dry-run"])
    finally:
        logger.handlers[:] = before
    out = capsys.readouterr()
    assert code == expect, out
    assert "Traceback" not in out.err
    assert not (tmp_path / "out").exists()
    return out.err if expect == 2 else out.out


# --- the dataset's rows ---------------------------------------------------------------------------------------


def test_jsonl_missing_rejected_names_the_file_line_and_field(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", [GOOD, {"prompt": "q", "chosen": "c"}])
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD])
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "d")})
    assert f"{path} line 2: missing field 'rejected' (fields: prompt, chosen)" in err


@pytest.mark.parametrize(
    "values, line, got",
    [
        ([1], 1, "got number 1"),  # not a string
        ([None], 1, "got null null"),  # null
        (["ok", ["a", "list"]], 2, 'got list ["a", "list"]'),  # mixed: a string, then a list
    ],
)
def test_non_string_null_or_mixed_chosen_names_the_line(tmp_path, capsys, values, line, got):
    rows = [{**GOOD, "chosen": v} for v in values]
    path = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD])
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "d")})
    assert f"{path} line {line}: field 'chosen' must be a string, {got}" in err


def test_an_extra_column_that_changes_type_is_named(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d" / "train.jsonl", [{**GOOD, "score": 1}, {**GOOD, "score": "high"}])
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD])
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "d")})
    assert f"{path} line 2: field 'score' is a string but a number in line 1" in err


def test_empty_file(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "empty.jsonl")})
    assert f"{tmp_path / 'empty.jsonl'}: no rows (the file is empty)" in err


def test_random_bytes_in_a_jsonl_file(tmp_path, capsys):
    path = tmp_path / "d" / "train.jsonl"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 4)
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD])
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "d")})
    assert f"{path} line 1: not UTF-8 text" in err or f"{path} line 1: not valid JSON" in err


def test_truncated_last_line(tmp_path, capsys):
    path = tmp_path / "d" / "train.jsonl"
    write_jsonl(path, [GOOD, GOOD])
    path.write_text(path.read_text() + json.dumps(GOOD)[:20])
    write_jsonl(tmp_path / "d" / "test.jsonl", [GOOD])
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "d")})
    assert f"{path} line 3: not valid JSON (a truncated last line?)" in err


def test_large_file_checks_its_head_and_its_last_line_only(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "SCAN_BYTES", 1000)
    monkeypatch.setattr(checks, "HEAD_ROWS", 10)
    path = tmp_path / "big" / "train.jsonl"
    write_jsonl(path, [GOOD] * 20 + [{"prompt": "q", "chosen": 3, "rejected": "r"}] + [GOOD] * 100)
    write_jsonl(tmp_path / "big" / "test.jsonl", [GOOD])
    assert checks.dataset_problems(path.parent, ("train", "test")) == []  # row 21 is past the head: the run finds it
    path.write_text(path.read_text() + '{"prompt": "q", "cho')
    (problem,) = checks.dataset_problems(path.parent, ("train", "test"))
    assert problem.startswith(f"{path} last line: not valid JSON (a truncated last line?)")
    write_jsonl(path, [GOOD] * 5 + [{"prompt": "q"}] + [GOOD] * 100)
    (problem,) = checks.dataset_problems(path.parent, ("train", "test"))
    assert problem.startswith(f"{path} line 6: missing field 'chosen', 'rejected'")


def test_saved_dataset_checked_from_its_metadata(tmp_path, capsys):
    import datasets

    rows = [{"prompt": "q", "chosen": "c"}]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(tmp_path / "saved"))
    err = dry_run(tmp_path, capsys, {"dataset_path": str(tmp_path / "saved")})
    assert f"{tmp_path / 'saved'} [train]: missing column 'rejected' (columns: prompt, chosen)" in err


# --- splits ---------------------------------------------------------------------------------------------------


def test_folder_without_a_test_split(tmp_path, capsys):
    folder = pair_folder(tmp_path, test=False)
    err = dry_run(tmp_path, capsys, {"dataset_path": folder})
    assert f"{folder} has no 'test' split (splits: train)" in err


def test_empty_test_jsonl(tmp_path, capsys):
    folder = pair_folder(tmp_path, test=[])
    err = dry_run(tmp_path, capsys, {"dataset_path": folder})
    assert f"{Path(folder) / 'test.jsonl'}: no rows (the file is empty)" in err


def test_evaluation_set_without_the_named_split(tmp_path, capsys):
    other = pair_folder(tmp_path, name="other")
    err = dry_run(
        tmp_path,
        capsys,
        {
            "evaluation_datasets_paths": [other],
            "evaluation_datasets_names": ["o"],
            "evaluation_datasets_splits": ["validation"],
        },
    )
    assert f"evaluation dataset 'o': {other} has no 'validation' split (splits: test, train)" in err


def test_single_jsonl_file_without_a_split_column_says_how_to_give_a_test_split(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD] * 4)
    err = dry_run(tmp_path, capsys, {"dataset_path": path})
    assert f"dataset_path: {path} has no 'test' split" in err
    assert "give each row a 'split' field ('train' or 'test')" in err and "<folder>/test.jsonl" in err
    # the two ways it names are accepted
    write_jsonl(tmp_path / "pairs.jsonl", [{**GOOD, "split": s} for s in ("train", "train", "test")])
    assert "1 run(s)" in dry_run(tmp_path, capsys, {"dataset_path": path}, expect=0)
    # as an evaluation set, a single file is its 'train' split
    assert "1 run(s)" in dry_run(
        tmp_path,
        capsys,
        {
            "evaluation_datasets_paths": [path],
            "evaluation_datasets_names": ["e"],
            "evaluation_datasets_splits": ["train"],
        },
        expect=0,
    )


# --- the plan file and its keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [-1, math.nan, math.inf, 0])
def test_lr_must_be_finite_and_positive(tmp_path, capsys, lr):
    err = dry_run(tmp_path, capsys, {"lr": lr})
    assert "field 'lr': Value error, lr must be a finite number above 0" in err


def test_a_plan_of_random_bytes(tmp_path, capsys):
    err = dry_run(tmp_path, capsys, raw=bytes(range(128, 256)) * 10)
    assert "plan.json: not a JSON plan: byte 0 (0x80) is not UTF-8 text" in err


def test_a_plan_nested_too_deeply(tmp_path, capsys):
    err = dry_run(tmp_path, capsys, raw=b"[" * 100000)
    assert "plan.json: not a plan: its JSON is nested too deeply to read" in err


@pytest.mark.parametrize(
    "top, message",
    [
        ({"skip": -1}, "plan key 'skip' must be at least 0"),
        ({"skip": 100}, "plan key 'skip' is 100 but the plan expands to 1 run(s): no run would be left"),
        ({"skip": 1}, "plan key 'skip' is 1 but the plan expands to 1 run(s)"),
        ({"repetitions": 0}, "plan key 'repetitions' must be at least 1"),
        ({"repetitions": True}, "plan key 'repetitions' must be int, got True"),
    ],
)
def test_skip_and_repetitions_that_leave_no_run_or_slice_backwards(tmp_path, capsys, top, message):
    assert message in dry_run(tmp_path, capsys, **top)


def test_num_train_samples_above_the_split_is_a_warning(tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="rm_exps"):
        dry_run(tmp_path, capsys, {"num_train_samples": 10**12}, expect=0)
    assert "num_train_samples 1000000000000 is more than the 3 rows of" in caplog.text
    import datasets

    from rm_exps.data.preference import subsample  # and the run's subsampling says it again

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rm_exps"):
        assert len(subsample(datasets.Dataset.from_list([GOOD] * 3), 10**12, 0)) == 3
    assert "1000000000000 rows asked for (num_train_samples / num_test_samples), the split has only 3" in caplog.text


@pytest.mark.parametrize("name", ["[ ]", "", "{model_cache_dir}"])
def test_experiment_name_that_sanitizes_to_nothing(tmp_path, capsys, name):
    err = dry_run(tmp_path, capsys, {"experiment_name": name, "model_cache_dir": ""})
    assert "is empty once sanitized" in err and "write into its outputs_dir itself" in err


@pytest.mark.parametrize(
    "template, field",
    [
        ("{objective.__class__}", "objective.__class__"),
        ("{bon_n[0]}", "bon_n[0]"),
        ("run_{}", ""),
        ("{lr:{objective.x}}", "objective.x"),
    ],
)
def test_templates_name_plain_fields_only(tmp_path, capsys, template, field):
    err = dry_run(tmp_path, capsys, {"experiment_name": template})
    assert f"uses {{{field}}}: a template names plain fields only" in err


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("learnig_rate", "lr"),
        ("learning_rate", "lr"),
        ("num_train_epochs", "epochs"),
        ("per_device_train_batch_size", "batch_size"),
        ("beta", "kl_coeff"),
        ("model_name_or_path", "model"),
        ("Learning_Rate", "lr"),
        ("epoch", "epochs"),
        ("objectve", "objective"),
        ("weight_decy", "weight_decay"),
        ("lr_rate", "lr"),
        ("max_seq_length", "max_length"),
    ],
)
def test_unknown_field_suggests_the_name_other_tools_use(tmp_path, capsys, key, suggestion):
    err = dry_run(tmp_path, capsys, {key: 1e-5})
    assert f"unknown field '{key}' (did you mean '{suggestion}'?)" in err


def test_no_suggestion_for_a_name_close_to_nothing(tmp_path, capsys):
    err = dry_run(tmp_path, capsys, {"frobnicate": 1})
    assert "unknown field 'frobnicate'\n" in err or err.rstrip().endswith("unknown field 'frobnicate'")
