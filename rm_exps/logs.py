"""The package logger's console output. Kept free of heavy imports, so the command-line entry
points set it up first, before they know whether anything will train."""

from __future__ import annotations

import logging
import sys

CONSOLE_MARK = "rm_exps_console"  # the attribute that tells the console handler from run.log's


def console_handler() -> logging.Handler:
    """A stderr handler with a short time stamp, marked as the console (a run quiets it on other ranks)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    setattr(handler, CONSOLE_MARK, True)
    return handler


def log_to_console(level: int = logging.INFO) -> logging.Logger:
    """The package logger at `level`, with one console handler however often this is called."""
    logger = logging.getLogger("rm_exps")
    if not any(getattr(h, CONSOLE_MARK, False) for h in logger.handlers):
        logger.addHandler(console_handler())
    logger.setLevel(level)
    return logger
