"""Plan-time checks of a local preference dataset: its splits and its rows, without loading it.

`dataset_problems(path, splits)` says what would make the run fail when it loads `path` (see
data.local for the layouts): a missing or empty split, a row that is not JSON, a missing or
non-string prompt/chosen/rejected, a column whose type changes between rows. What is read:
  save_to_disk folders  dataset_dict.json, each split's dataset_info.json (features) and the
                        record-batch headers of its arrow files (row counts); never the data
  parquet               the footer (schema, rows) and the `split` column if there is one
  JSON / JSONL          a file up to SCAN_BYTES: every row parsed and checked; a larger one: its
                        first HEAD_ROWS rows and its last line (a truncated write shows there); the
                        rows in between, and the split names of a large file with a `split` column,
                        are left to the run
Results are cached per (file, size, mtime), so a grid of runs over one dataset reads it once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from rm_exps.data.errors import DatasetError
from rm_exps.data.local import DATA_FILE_BUILDERS, SPLIT_COLUMN, _arrow_rows, _data_files, _split_name, local_layout

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
SCAN_BYTES = 50 * 2**20
HEAD_ROWS = 1000
TAIL_BYTES = 1 << 20
MAX_PROBLEMS = 5  # per file

Splits = dict[str, "int | None"]  # split -> rows (None: not counted)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


class _Rows:
    """Checks rows one by one: required string fields, one JSON type per column."""

    def __init__(self, file: Path, unit: str):
        self.file, self.unit, self.problems = file, unit, []
        self.kinds: dict[str, tuple[str, int]] = {}
        self.split_rows: dict[str, int] = {}
        self.rows = 0  # rows seen
        self.complete = True  # every row seen

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(f"{self.file}: further problems not listed")

    def row(self, where: int | str, row) -> None:
        self.rows += 1
        at = f"{self.file} {where if isinstance(where, str) else f'{self.unit} {where}'}"
        if not isinstance(row, dict):
            self.add(f"{at}: a row must be a JSON object with {', '.join(REQUIRED_COLUMNS)}, got {_kind(row)}")
            return
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            self.add(f"{at}: missing field {', '.join(map(repr, missing))} (fields: {', '.join(row) or 'none'})")
        for column in REQUIRED_COLUMNS:
            if column in row and not isinstance(row[column], str):
                self.add(
                    f"{at}: field {column!r} must be a string, got {_kind(row[column])} {json.dumps(row[column])[:60]}"
                )
        for column, value in row.items():
            kind = _kind(value)
            if kind == "null" or column in REQUIRED_COLUMNS:
                continue
            first = self.kinds.setdefault(column, (kind, where))
            if first[0] != kind:
                self.add(
                    f"{at}: field {column!r} is a {kind} but a {first[0]} in {self.unit} {first[1]} "
                    "(a column holds one type)"
                )
        if SPLIT_COLUMN in row:
            name = str(row[SPLIT_COLUMN])
            self.split_rows[name] = self.split_rows.get(name, 0) + 1


def _parse_line(rows: _Rows, number: int | str, line: bytes, last: bool) -> None:
    where = number if isinstance(number, str) else f"line {number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        rows.add(
            f"{rows.file} {where}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
            "is this a JSONL file?"
        )
        return
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (a truncated last line?)" if last else ""
        rows.add(f"{rows.file} {where}: not valid JSON{hint}: {e.msg} at column {e.colno}")
        return
    except RecursionError:
        rows.add(f"{rows.file} {where}: JSON nested too deeply")
        return
    rows.row(number, row)


def _scan_lines(file: Path, size: int) -> _Rows:
    rows = _Rows(file, "line")
    with open(file, "rb") as f:
        if size <= SCAN_BYTES:
            lines = f.read().split(b"\n")
            last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
            for i, line in enumerate(lines):
                if line.strip():
                    _parse_line(rows, i + 1, line, i == last)
            return rows
        for i, line in enumerate(f):  # the head
            if i >= HEAD_ROWS:
                break
            if line.strip():
                _parse_line(rows, i + 1, line, False)
        f.seek(max(size - TAIL_BYTES, 0))
        tail = [line for line in f.read().split(b"\n") if line.strip()]
        if len(tail) > 1:  # the first piece of the tail may start mid-line
            _parse_line(rows, "last line", tail[-1], True)
    rows.complete = False
    return rows


def _scan_json(file: Path, size: int) -> _Rows:
    """A .json file: an array of rows, an object of columns, or JSON lines (as datasets reads it)."""
    if size > SCAN_BYTES:
        with open(file, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"{") and b"\n" in head:  # JSON lines, probably: check its head and tail
            return _scan_lines(file, size)
        rows = _Rows(file, "row")
        rows.complete = False
        return rows
    data = file.read_bytes()
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return _scan_lines(file, size)
    rows = _Rows(file, "row")
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, list) for v in value.values())
        and len({len(v) for v in value.values()}) == 1
    ):
        value = [dict(zip(value, r)) for r in zip(*value.values())]
    if not isinstance(value, list):
        rows.add(f"{file}: a JSON dataset file holds a list of rows (or one row per line), got {_kind(value)}")
        return rows
    for i, row in enumerate(value, start=1):
        rows.row(i, row)
    return rows


def _scan_parquet(file: Path) -> _Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _Rows(file, "row")
    try:
        meta = pq.ParquetFile(file).metadata
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as e:
        rows.add(f"{file}: not a readable parquet file ({e})")
        return rows
    for column in REQUIRED_COLUMNS:
        if column not in schema.names:
            rows.add(f"{file}: missing column {column!r} (columns: {', '.join(schema.names)})")
        elif not (pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)):
            rows.add(f"{file}: column {column!r} must hold strings, found {schema.field(column).type}")
    rows.rows = meta.num_rows
    if SPLIT_COLUMN in schema.names:
        for value in pq.read_table(file, columns=[SPLIT_COLUMN]).column(SPLIT_COLUMN).to_pylist():
            rows.split_rows[str(value)] = rows.split_rows.get(str(value), 0) + 1
    return rows


@lru_cache(maxsize=256)
def _scan_cached(file: str, size: int, mtime_ns: int) -> _Rows:
    path = Path(file)
    if path.suffix == ".parquet":
        return _scan_parquet(path)
    if path.suffix == ".json":
        return _scan_json(path, size)
    return _scan_lines(path, size)


def _scan(file: Path) -> _Rows:
    stat = file.stat()
    return _scan_cached(str(file), stat.st_size, stat.st_mtime_ns)


def _saved_split(folder: Path, where: str) -> tuple[int | None, list[str]]:
    """Rows and problems of one save_to_disk split, from its dataset_info.json and arrow headers."""
    try:
        info = json.loads((folder / "dataset_info.json").read_text())
        features = info.get("features") or {}
    except (OSError, ValueError, AttributeError):
        return _arrow_rows(folder), []  # no readable metadata: leave it to the run
    problems = []
    for column in REQUIRED_COLUMNS:
        feature = features.get(column)
        if feature is None:
            problems.append(f"{where}: missing column {column!r} (columns: {', '.join(features) or 'none'})")
        elif not (isinstance(feature, dict) and feature.get("dtype") in ("string", "large_string")):
            kind = feature.get("dtype", feature.get("_type")) if isinstance(feature, dict) else type(feature).__name__
            problems.append(f"{where}: column {column!r} must hold strings, found {kind}")
    return _arrow_rows(folder), problems


def inspect_splits(path: str | Path) -> tuple[Splits | None, list[str]]:
    """(split -> rows, problems) of a local dataset; splits None when their names are not known
    cheaply (a large JSON file with a `split` column). Raises DatasetError for a bad layout."""
    path = Path(path)
    layout = local_layout(path)
    if layout == "saved_dict":
        try:
            names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, [f"{path}: unreadable dataset_dict.json"]
        splits, problems = {}, []
        for name in names:
            rows, found = _saved_split(path / name, f"{path} [{name}]")
            splits[name] = rows
            problems += found
        return splits, problems
    if layout == "saved_dataset":
        rows, problems = _saved_split(path, f"{path} [train]")
        return {"train": rows}, problems
    files = [path] if layout == "file" else _data_files(path)
    if layout == "folder" and len({DATA_FILE_BUILDERS[f.suffix] for f in files}) > 1:
        return None, [f"{path} mixes json and parquet files; keep one format per folder"]
    splits: dict[str, int | None] = {}
    problems: list[str] = []
    for file in files:
        scan = _scan(file)
        problems += scan.problems
        if scan.complete and scan.rows == 0:
            problems.append(f"{file}: no rows (the file is empty)")
        if layout == "file":
            if scan.split_rows or (not scan.complete and scan.rows == 0):
                # split by its column; a large file's split names are not known cheaply (nor an unread array's)
                return (dict(scan.split_rows) if scan.complete else None), problems
            return {"train": scan.rows if scan.complete else None}, problems
        name = _split_name(file)
        rows = scan.rows if scan.complete else None
        splits[name] = None if rows is None or splits.get(name, 0) is None else splits.get(name, 0) + rows
    return splits, problems


def dataset_problems(path: str | Path, splits: tuple[str, ...] = ()) -> list[str]:
    """What would stop a run from reading `splits` of the dataset at `path` ([] if nothing)."""
    try:
        found, problems = inspect_splits(path)
    except DatasetError as e:
        return [str(e)]
    if problems or found is None:
        return problems
    layout = local_layout(path)
    for split in splits:
        if split not in found:
            if split == "test" and layout == "file" and set(found) == {"train"}:
                problems.append(
                    f"{path} has no 'test' split: a single {Path(path).suffix} file without a "
                    f"'{SPLIT_COLUMN}' column is all 'train'; give each row a '{SPLIT_COLUMN}' field "
                    "('train' or 'test'), or put train and test files in one folder "
                    "(<folder>/train.jsonl, <folder>/test.jsonl) and point dataset_path at the folder"
                )
            else:
                problems.append(f"{path} has no {split!r} split (splits: {', '.join(found) or 'none'})")
        elif found[split] == 0:
            problems.append(f"{path} [{split}]: split is empty (no rows)")
    return problems


def split_rows(path: str | Path, split: str) -> int | None:
    """Rows of one split as the checks counted them (None: unknown)."""
    try:
        found, _ = inspect_splits(path)
    except DatasetError:
        return None
    return (found or {}).get(split)
