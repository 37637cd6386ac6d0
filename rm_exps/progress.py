"""Progress bars on a terminal, nothing otherwise (CI and log files get the periodic log lines)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr by default) is a terminal and RM_EXPS_PROGRESS is not 0."""
    stream = stream or sys.stderr
    if os.environ.get("RM_EXPS_PROGRESS", "1") == "0":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def progress(
    iterable: Iterable[Any], desc: str, enabled: bool = True, stream: TextIO | None = None, total: int | None = None
) -> Any:
    """A tqdm bar over `iterable` when enabled and interactive; a bar that draws nothing otherwise
    (its set_postfix is still callable)."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=stream,
        leave=False,
        dynamic_ncols=True,
        disable=not (enabled and interactive(stream)),
    )
