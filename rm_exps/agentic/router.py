"""Which verifiers apply to an instruction: one LLM call, or a forced set (no call)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from rm_exps.agentic.client import ChatClient, LLMResponseError

PROMPT = (
    "You decide which checks a response to the instruction below needs.\n"
    "[A] Constraint check: the instruction sets explicit requirements on the form of the response, "
    "such as its length, number of words, sentences, paragraphs or sections, keywords to include or "
    "avoid, a format (JSON, bullet points, a title), letter case, punctuation, or how it starts or ends.\n"
    "[B] Factuality check: a response will likely state facts about the world that can be right or wrong.\n"
    "\n"
    "Instruction:\n"
    "{instruction}\n"
    "\n"
    'Answer with a single line: "CHECKS: " followed by the letters that apply separated by commas, or '
    '"CHECKS: none".'
)

LETTERS = {"A": "instruction_following", "B": "factuality"}


def parse_checks(text: str) -> set[str]:
    """Verifier names from the router's reply (its last CHECKS: line); LLMResponseError if none."""
    lines = re.findall(r"CHECKS\s*:\s*(.*)", text, flags=re.IGNORECASE)
    if not lines:
        raise LLMResponseError("router", f"no 'CHECKS:' line in the reply {text[:200]!r}")
    items = {item.strip().strip("[]().").upper() for item in lines[-1].split(",")}
    items.discard("")
    if items == {"NONE"}:
        return set()
    unknown = items - set(LETTERS)
    if unknown:
        raise LLMResponseError("router", f"unknown checks {sorted(unknown)} in {lines[-1]!r}")
    return {LETTERS[item] for item in items}


class Router:
    """`route(instruction)` -> the verifiers to run. With `force` (a list), exactly those, without
    a call: the reference's forced routing ("RewardAgent+Oracle"), except that forcing one verifier
    does not silently turn the other one off unless it is left out of the list."""

    def __init__(self, client: ChatClient, force: Iterable[str] | None = None):
        self.client = client
        self.force = None if force is None else set(force)

    def route(self, instruction: str) -> set[str]:
        if self.force is not None:
            return set(self.force)
        reply = self.client.complete(
            [{"role": "user", "content": PROMPT.format(instruction=instruction)}], max_tokens=32
        )
        return parse_checks(reply)
