"""The one closest-name helper: "unknown key 'x' (did you mean 'y'?)" everywhere.

Candidates are matched case-insensitively with difflib at `CUTOFF`, together with the keys of a
hint table (names other tools use for the same thing, e.g. transformers' `learning_rate` for
`lr`): a key close to a hint is answered with the hint's target, so `learnig_rate` suggests `lr`,
not the nearest spelling (`reg_ratio`). Below the cutoff nothing is suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

CUTOFF = (
    0.6  # difflib's default; 0.5 answered 'learnig_rate' and 'lr_rate' with 'reg_ratio', 'seeds' with 'random_seed'
)


def closest_name(key: Any, candidates: Iterable[Any], hints: Mapping[str, str] | None = None) -> str | None:
    """The candidate `key` most likely means, or None."""
    names = [str(c) for c in candidates]
    if not names:
        return None
    key = str(key)
    hints = {k.lower(): v for k, v in (hints or {}).items() if v in names}
    if key.lower() in hints:
        return hints[key.lower()]
    pool: dict[str, str] = {name.lower(): name for name in names}
    pool.update({k: v for k, v in hints.items() if k not in pool})
    match = difflib.get_close_matches(key.lower(), list(pool), n=1, cutoff=CUTOFF)
    return pool[match[0]] if match else None


def did_you_mean(key: Any, candidates: Iterable[Any], hints: Mapping[str, str] | None = None) -> str:
    """' (did you mean 'name'?)' or ''."""
    match = closest_name(key, candidates, hints)
    return f" (did you mean '{match}'?)" if match is not None and match != str(key) else ""
