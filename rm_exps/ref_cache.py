"""An on-disk cache of frozen reference log-probabilities, shared by every run that can use it.

An IM-RM (or DPO) sweep over kl_coeff, lr or seeds scores the same examples with the same frozen
reference again and again. Each entry is keyed by the reference's fingerprint and the example's
token ids; the ids already carry the tokenizer, the chat formatting and the data, so a change to
any of them misses the cache, and a change of model, dtype or of randomly initialized new
embedding rows changes the fingerprint, and so does the autocast the log-probs are computed under.
One JSON file per fingerprint under `{data_files_dir}/reference_logps/`, rewritten atomically by
the main process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rm_exps.batching import REF_LOGPS
from rm_exps.outputs import read_json, write_json_atomic

SAMPLED_VALUES = 16  # from each end of every parameter


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter's name, shape, dtype and first/last values: cheap (no pass over all
    the weights) and different for another checkpoint, dtype or resized vocabulary (new rows are last)."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = torch.cat([flat[:SAMPLED_VALUES], flat[-SAMPLED_VALUES:]]).float().cpu()
        digest.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:24]


def cache_fingerprint(model: nn.Module, autocast: str) -> str:
    """The cache file's key: the reference's fingerprint and the autocast its log-probs are computed
    under ('no', 'bf16', 'fp16'; the policy's precision), since bf16-autocast log-probs are not fp32
    ones. Without autocast it is the bare fingerprint, so caches written before stay valid."""
    fingerprint = model_fingerprint(model)
    return fingerprint if autocast == "no" else f"{fingerprint}-{autocast}"


def example_key(example: dict[str, Any]) -> str:
    ids = [example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]]
    return hashlib.sha1(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()


class ReferenceLogpsCache:
    def __init__(self, folder: str | Path, fingerprint: str):
        self.path = Path(folder) / f"{fingerprint}.json"
        self.entries: dict[str, list[float]] = read_json(self.path) or {}

    def attach(self, datasets: Iterable[Any]) -> int:
        """Give cached (chosen, rejected) log-probs to the examples that have none; how many got one."""
        hits = 0
        for dataset in datasets:
            for example in dataset.examples:
                if REF_LOGPS not in example and (value := self.entries.get(example_key(example))) is not None:
                    example[REF_LOGPS] = tuple(value)
                    hits += 1
        return hits

    def store(self, datasets: Iterable[Any], write: bool) -> int:
        """Remember every example's log-probs; rewrite the file (if `write`) when some are new."""
        new = 0
        for dataset in datasets:
            for example in dataset.examples:
                if REF_LOGPS in example and (key := example_key(example)) not in self.entries:
                    self.entries[key] = list(example[REF_LOGPS])
                    new += 1
        if new and write:
            write_json_atomic(self.path, self.entries)
        return new
