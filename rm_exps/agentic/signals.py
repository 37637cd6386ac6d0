"""What a verifier returns, and helpers to read the structured parts of model replies."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Signal:
    """One verifier's scores for a list of candidates, index-aligned; None = not scored (abstain).

    details: per-verifier evidence (checkers and their per-candidate results, compared pairs...).
    errors: what went wrong (LLM errors, unparsable replies); never replaced by a made-up score.
    """

    name: str
    scores: list[float | None]
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.scores)


def python_list(text: str) -> list | None:
    """The Python/JSON list literal spanning the first '[' to the last ']' of `text`, or None."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        return None
    try:
        value = ast.literal_eval(text[start : end + 1])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def code_block(text: str) -> str:
    """The first fenced code block of a reply, or the whole reply if it has none."""
    match = re.search(r"```(?:[A-Za-z0-9_+-]*)\n(.*?)```", text, flags=re.DOTALL)
    return (match.group(1) if match else text).strip() + "\n"
