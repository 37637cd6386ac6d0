"""Progress bars on a terminal, nothing otherwise (CI and log files get the periodic log lines).

This holds for the libraries' bars too: `quiet_library_output` switches off those of transformers,
huggingface_hub and datasets, and transformers' load reports, when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
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


def quiet_library_output() -> None:
    """Off a terminal, no library progress bars (weight loading, downloads, dataset map/filter/save)
    and no transformers load reports (the table of missing/unexpected keys printed on every load; a
    head rm_exps adds is always "missing"). Other library warnings stay. Idempotent; call it where
    the product starts loading models or data."""
    if interactive():
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # transformers' bars and huggingface_hub's
    datasets.disable_progress_bars()
    logging.getLogger("transformers.modeling_utils").addFilter(_not_a_load_report)


def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def library_bars_hidden() -> Iterator[None]:
    """Off a terminal, the tqdm bars of library code that has no switch for them (transformers' GGUF
    conversion) go nowhere: sys.stderr is swapped for the block. Logging handlers keep their own
    streams, so log lines still reach the log."""
    if interactive():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield
