"""The preference-record contract: load a dataset, check it has string prompt/chosen/rejected, subsample.

Every experiment reads its data through load_preference_dataset, so a wrong path or a missing
column fails here, naming the path and the column, instead of deep inside tokenization.
Extra columns (orig_index, statement, ...) are kept; training ignores them.
"""

import logging

import datasets
import torch

from rm_exps.data.errors import DatasetError
from rm_exps.data.local import load_local, require_columns

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
log = logging.getLogger("rm_exps.data")


def load_preference_dataset(path: str) -> datasets.DatasetDict:
    """A save_to_disk DatasetDict folder, a .json/.jsonl file (split "train", or one split per value
    of a "split" column) or a folder of <split>.json/.jsonl files; every split non-empty with
    string prompt/chosen/rejected columns."""
    dd = load_local(path)
    if not dd:
        raise DatasetError(f"{path}: no splits")
    for split, ds in dd.items():
        where = f"{path} [{split}]"
        require_columns(ds, REQUIRED_COLUMNS, where)
        for column in REQUIRED_COLUMNS:
            dtype = getattr(ds.features[column], "dtype", None)
            if dtype not in ("string", "large_string"):
                raise DatasetError(f"{where}: column {column!r} must hold strings, found {ds.features[column]}")
        if len(ds) == 0:
            raise DatasetError(f"{where}: split is empty")
    return dd


def subsample(ds: datasets.Dataset, n: int, seed: int | torch.Generator, sort: bool = False) -> datasets.Dataset:
    """n random rows: randperm(len)[:n] (sorted if `sort`); n <= 0 or n >= len returns ds unchanged
    and draws nothing. `seed` is an int, or a torch.Generator to continue a shared stream (the
    reference subsamples test with the generator that subsampled train)."""
    if n > len(ds) and not sort:  # a subset for training (evaluation subsets are sorted)
        log.warning(
            "%d rows asked for (num_train_samples / num_test_samples), the split has only %d: all %d are used",
            n,
            len(ds),
            len(ds),
        )
    if n <= 0 or n >= len(ds):
        return ds
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(ds), generator=generator)[:n]
    if sort:
        indices = indices.sort().values
    return ds.select(indices.tolist())
