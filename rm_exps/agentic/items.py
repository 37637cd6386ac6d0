"""The agentic evaluation's items: one instruction, its candidates and the preferred one.

Format (JSON list or JSONL), documented in docs/AGENTIC.md:
    {"instruction": str, "candidates": [str, ...], "label": int, "id": str?, "subset": str?}
or a pairwise record {"prompt", "chosen", "rejected"[, "id", "subset"]} (candidates [chosen, rejected], label 0).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AgenticDataError(ValueError):
    """An agentic data file that cannot be read as items."""


@dataclass
class Item:
    id: str
    instruction: str
    candidates: list[str]
    label: int
    subset: str = "default"

    def placement(self, seed: int) -> list[int]:
        """Original indices in the order the verifiers and the judger see them."""
        return placement(len(self.candidates), seed, self.id)


def placement(n: int, seed: int, key: str) -> list[int]:
    """A permutation of range(n) drawn from Random(f"{seed}:{key}"): random per key, reproducible,
    so no candidate position is systematically favoured (the reference always put chosen in slot B)."""
    order = list(range(n))
    random.Random(f"{seed}:{key}").shuffle(order)
    return order


def _item(record: Any, where: str) -> Item:
    if not isinstance(record, dict):
        raise AgenticDataError(f"{where}: an item is a JSON object, got {type(record).__name__}")
    if {"prompt", "chosen", "rejected"} <= record.keys():
        record = {
            **record,
            "instruction": record["prompt"],
            "candidates": [record["chosen"], record["rejected"]],
            "label": 0,
        }
    missing = [k for k in ("instruction", "candidates", "label") if k not in record]
    if missing:
        raise AgenticDataError(
            f"{where}: missing {', '.join(missing)} (an item has instruction, candidates, label; "
            "or prompt, chosen, rejected)"
        )
    candidates, label = record["candidates"], record["label"]
    if (
        not isinstance(record["instruction"], str)
        or not isinstance(candidates, list)
        or len(candidates) < 2
        or not all(isinstance(c, str) for c in candidates)
    ):
        raise AgenticDataError(f"{where}: instruction must be a string and candidates a list of at least two strings")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(candidates):
        raise AgenticDataError(
            f"{where}: label must be an index into candidates (0..{len(candidates) - 1}), got {label!r}"
        )
    return Item(
        str(record.get("id", where)), record["instruction"], candidates, label, str(record.get("subset", "default"))
    )


def load_items(path: str | Path, limit: int = -1) -> list[Item]:
    """The items of a JSON list or JSONL file (the first `limit` if > 0). AgenticDataError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise AgenticDataError(f"agentic data file not found: {path}")
    text = path.read_text()
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as e:
        raise AgenticDataError(f"{path}: invalid JSON ({e})") from None
    items = [_item(r, f"{path.name} item {i}") for i, r in enumerate(records)]
    if not items:
        raise AgenticDataError(f"{path}: no items")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise AgenticDataError(f"{path}: item ids are not unique")
    return items[:limit] if limit > 0 else items
