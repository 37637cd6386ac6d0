"""Load a DatasetDict from any local layout we accept, so every loader reads files the same way.

Layouts, checked in this order:
  saved_dict    a save_to_disk DatasetDict folder (has dataset_dict.json)
  saved_dataset a save_to_disk Dataset folder (has state.json)      -> one split "train"
  file          a .json / .jsonl / .parquet file                     -> one split "train",
                or, if it has a "split" column, one split per value (the column is dropped)
  folder        a folder of such files, at its top level or in data/ (the hub's layout); the split
                is the file stem without a shard suffix ("test.jsonl", "data/train_prefs-00000-of-00001.parquet")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from rm_exps.data.errors import DatasetError
from rm_exps.progress import quiet_library_output

if TYPE_CHECKING:  # loading imports datasets; the plan-time checks (data.checks) read files without it
    import datasets

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_COLUMN = "split"
SAVE_TO_DISK_FILES = {"dataset_dict.json", "dataset_info.json", "state.json", "run_config.json"}  # not data


def _data_files(folder: Path) -> list[Path]:
    files = [*folder.glob("*"), *(folder / "data").glob("*")]
    return sorted(
        p
        for p in files
        if p.suffix in DATA_FILE_BUILDERS
        and p.is_file()
        and not p.name.startswith(".")
        and p.name not in SAVE_TO_DISK_FILES
    )


def local_layout(path: str | Path) -> str:
    """Which layout `path` has (see the module docstring), without reading any data."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    if path.is_file():
        if path.suffix not in DATA_FILE_BUILDERS:
            raise DatasetError(f"unsupported dataset file {path}: expected one of {sorted(DATA_FILE_BUILDERS)}")
        return "file"
    if (path / "dataset_dict.json").is_file():
        return "saved_dict"
    if (path / "state.json").is_file():
        return "saved_dataset"
    if _data_files(path):
        return "folder"
    raise DatasetError(
        f"{path} is neither a save_to_disk dataset (no dataset_dict.json) "
        f"nor a folder of {'/'.join(sorted(DATA_FILE_BUILDERS))} files"
    )


def _split_name(file: Path) -> str:
    return re.sub(r"-\d{5}-of-\d{5}$", "", file.name[: -len(file.suffix)])


def _file_rows(file: Path) -> int | None:
    """Rows of one data file from its metadata: a parquet footer, the lines of a JSONL file (None
    for a JSON array, which must be parsed, and for a file with a `split` column)."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(file).metadata
        return None if SPLIT_COLUMN in meta.schema.names else meta.num_rows
    if file.suffix != ".jsonl":
        return None
    with open(file, "rb") as f:
        lines = [line for line in f if line.strip()]
    try:
        first = json.loads(lines[0]) if lines else {}
    except ValueError:
        return None
    return None if isinstance(first, dict) and SPLIT_COLUMN in first else len(lines)


def _arrow_rows(folder: Path) -> int | None:
    """Rows of a save_to_disk Dataset folder: the record-batch headers of its arrow files (memory-mapped)."""
    import pyarrow as pa

    try:
        files = [folder / f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
        total = 0
        for file in files:
            with pa.memory_map(str(file)) as source:
                total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
        return total
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None


def split_num_rows(path: str | Path, split: str) -> int | None:
    """Rows of one split of a local dataset, read from metadata without loading the data (see
    _file_rows and _arrow_rows); None when that cannot be told cheaply or there is no such split."""
    path = Path(path)
    try:
        layout = local_layout(path)
    except DatasetError:
        return None
    if layout == "saved_dict":
        return _arrow_rows(path / split) if (path / split / "state.json").is_file() else None
    if layout == "saved_dataset":
        return _arrow_rows(path) if split == "train" else None
    files = [path] if layout == "file" else [f for f in _data_files(path) if _split_name(f) == split]
    if not files or (layout == "file" and split != "train"):
        return None
    counts = [_file_rows(f) for f in files]
    return None if None in counts else sum(counts)


def _split_by_column(ds: datasets.Dataset) -> datasets.DatasetDict:
    import datasets

    if SPLIT_COLUMN not in ds.column_names:
        return datasets.DatasetDict({"train": ds})
    return datasets.DatasetDict(
        {
            str(value): ds.filter(
                lambda s, v=value: s == v, input_columns=SPLIT_COLUMN, keep_in_memory=True
            ).remove_columns(SPLIT_COLUMN)
            for value in ds.unique(SPLIT_COLUMN)
        }
    )


def _load(path: Path, layout: str) -> datasets.DatasetDict:
    import datasets

    if layout == "saved_dict":
        return datasets.load_from_disk(str(path))
    if layout == "saved_dataset":
        return datasets.DatasetDict({"train": datasets.load_from_disk(str(path))})
    if layout == "file":
        ds = datasets.load_dataset(DATA_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        return _split_by_column(ds)
    files = _data_files(path)
    builders = {DATA_FILE_BUILDERS[f.suffix] for f in files}
    if len(builders) > 1:
        raise DatasetError(f"{path} mixes json and parquet files; keep one format per folder")
    splits: dict[str, list[str]] = {}
    for f in files:
        splits.setdefault(_split_name(f), []).append(str(f))
    return datasets.load_dataset(builders.pop(), data_files=splits)


def load_local(path: str | Path) -> datasets.DatasetDict:
    """Load `path` (any layout above) as a DatasetDict."""
    path = Path(path)
    layout = local_layout(path)
    try:
        return _load(path, layout)
    except DatasetError:
        raise
    except Exception as e:  # datasets fails deep inside on empty or malformed files; say which file
        raise DatasetError(f"could not load {path} ({layout}): {type(e).__name__}: {e}") from e


def pick_split(dd: datasets.DatasetDict, name: str, source: str | Path) -> datasets.Dataset:
    """dd[name]; a source with one split stands for that split whatever it is called."""
    if name in dd:
        return dd[name]
    if len(dd) == 1:
        return next(iter(dd.values()))
    raise DatasetError(f"{source} has no split {name!r} (splits: {', '.join(dd)})")


def require_columns(ds: datasets.Dataset, columns, where: str) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise DatasetError(f"{where}: missing column {column!r} (columns: {', '.join(ds.column_names)})")


def is_saved(folder: Path, config: dict) -> bool:
    """True if `folder` holds a complete saved DatasetDict made from exactly `config`."""
    try:
        stored = json.loads((folder / "run_config.json").read_text())
        return (folder / "dataset_dict.json").is_file() and stored == config
    except (OSError, ValueError):
        return False


def save_atomically(
    dd: datasets.DatasetDict, folder: Path, config: dict, extra_files: dict[str, dict] | None = None
) -> None:
    """save_to_disk + run_config.json (+ extra JSON files) into a temp sibling folder, then rename it
    to `folder`: a folder that exists is complete. If another process saved the same dataset first,
    its folder is kept."""
    quiet_library_output()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # unlike mkdtemp, honours the umask
    try:
        dd.save_to_disk(str(tmp))
        for name, content in {"run_config.json": config, **(extra_files or {})}.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        os.rename(tmp, folder)
    except OSError:
        if not is_saved(folder, config):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
