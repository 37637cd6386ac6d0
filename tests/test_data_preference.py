import json
from pathlib import Path

import datasets
import pytest
import torch

from rm_exps.data import DatasetError
from rm_exps.data.local import local_layout
from rm_exps.data.preference import REQUIRED_COLUMNS, load_preference_dataset, subsample

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")


def rows(n, **extra):
    return [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", **extra} for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_saved_dataset_dict_roundtrip_keeps_extra_columns(tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows(3, orig_index=1)),
            "test": datasets.Dataset.from_list(rows(2, orig_index=2)),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    loaded = load_preference_dataset(str(tmp_path / "ds"))
    assert {k: len(v) for k, v in loaded.items()} == {"train": 3, "test": 2}
    assert loaded["train"].column_names == ["prompt", "chosen", "rejected", "orig_index"]


def test_missing_rejected_column_is_named(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows(2)).remove_columns("rejected")})
    dd.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DatasetError, match="'rejected'") as info:
        load_preference_dataset(str(tmp_path / "ds"))
    assert str(tmp_path / "ds") in str(info.value)


def test_non_string_column_and_empty_file_are_rejected(tmp_path):
    write_jsonl(tmp_path / "ints.jsonl", [{"prompt": "p", "chosen": 1, "rejected": "r"}])
    with pytest.raises(DatasetError, match="'chosen' must hold strings"):
        load_preference_dataset(str(tmp_path / "ints.jsonl"))
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "empty" / "train.jsonl", rows(2))
    (tmp_path / "empty" / "test.jsonl").write_text("")
    with pytest.raises(DatasetError, match="could not load .*empty"):
        load_preference_dataset(str(tmp_path / "empty"))


def test_json_file_is_one_train_split(tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps(rows(4)))
    loaded = load_preference_dataset(str(tmp_path / "pairs.json"))
    assert list(loaded) == ["train"] and loaded["train"]["prompt"] == ["p0", "p1", "p2", "p3"]


def test_jsonl_split_column_makes_splits(tmp_path):
    records = [dict(r, split="train" if i % 3 else "test") for i, r in enumerate(rows(6))]
    loaded = load_preference_dataset(str(write_jsonl(tmp_path / "pairs.jsonl", records)))
    assert sorted(loaded) == ["test", "train"]
    assert loaded["test"]["prompt"] == ["p0", "p3"] and len(loaded["train"]) == 4
    assert "split" not in loaded["train"].column_names


def test_folder_of_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(3))
    (tmp_path / "test.json").write_text(json.dumps(rows(2)))
    loaded = load_preference_dataset(str(tmp_path))
    assert {k: len(v) for k, v in loaded.items()} == {"train": 3, "test": 2}


def check_dataset_path(path: str) -> str | None:
    """None if `path` exists and has a loadable layout, else why not. Reads no data."""
    try:
        local_layout(Path(path))
    except DatasetError as e:
        return str(e)
    return None


def test_check_dataset_path(tmp_path):
    assert "does not exist" in check_dataset_path(str(tmp_path / "missing"))
    assert "neither" in check_dataset_path(str(tmp_path))  # empty folder
    assert "unsupported" in check_dataset_path(str(write_jsonl(tmp_path / "x.txt", rows(1))))
    assert check_dataset_path(str(write_jsonl(tmp_path / "x.jsonl", rows(1)))) is None
    assert check_dataset_path(str(tmp_path)) is None  # now a folder of json files
    with pytest.raises(DatasetError, match="does not exist"):
        load_preference_dataset(str(tmp_path / "missing"))


def test_split_num_rows_reads_metadata_only(tmp_path):
    from rm_exps.data.local import split_num_rows

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows(5)), "test": datasets.Dataset.from_list(rows(2))}
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    assert split_num_rows(tmp_path / "saved", "train") == 5 and split_num_rows(tmp_path / "saved", "test") == 2
    assert split_num_rows(tmp_path / "saved", "validation") is None
    assert split_num_rows(write_jsonl(tmp_path / "one.jsonl", rows(3)), "train") == 3
    split_column = write_jsonl(tmp_path / "split.jsonl", [{**r, "split": "train"} for r in rows(3)])
    assert split_num_rows(split_column, "train") is None  # only parsing every row tells
    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "train.jsonl", rows(4))
    dd["test"].to_parquet(str(tmp_path / "files" / "test.parquet"))
    assert split_num_rows(tmp_path / "files", "train") == 4 and split_num_rows(tmp_path / "files", "test") == 2
    (tmp_path / "array.json").write_text(json.dumps(rows(2)))
    assert split_num_rows(tmp_path / "array.json", "train") is None
    assert split_num_rows(tmp_path / "missing", "train") is None


def test_subsample():
    ds = datasets.Dataset.from_list(rows(10))
    for n in (0, -1, 10, 11):
        assert subsample(ds, n, seed=1) is ds
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4].tolist()
    assert subsample(ds, 4, seed=3)["prompt"] == [f"p{i}" for i in expected]
    assert subsample(ds, 4, seed=3, sort=True)["prompt"] == [f"p{i}" for i in sorted(expected)]
    assert subsample(ds, 4, seed=3)["prompt"] == subsample(ds, 4, seed=3)["prompt"]
    assert subsample(ds, 4, seed=3)["prompt"] != subsample(ds, 4, seed=4)["prompt"]
    # a generator continues a shared stream, as the reference subsamples test after train
    g = torch.Generator().manual_seed(3)
    subsample(ds, 4, seed=g)
    assert subsample(ds, 4, seed=g)["prompt"] != subsample(ds, 4, seed=3)["prompt"]


@needs_shared
def test_real_prepared_ultrafeedback_loads():
    loaded = load_preference_dataset(str(SHARED_DATA / "exrm_imrm" / "ultrafeedback"))
    assert {k: len(v) for k, v in loaded.items()} == {"train": 200, "test": 200}
    assert set(REQUIRED_COLUMNS) <= set(loaded["test"].column_names)
    assert loaded["test"][0]["prompt"].startswith("CI Integration")


@needs_shared
def test_real_rewritten_keeps_extra_columns():
    loaded = load_preference_dataset(str(SHARED_DATA / "exrm_imrm" / "rewritten" / "paraphrase"))
    assert "orig_index" in loaded["test"].column_names
