"""Instruction-following verifier: hard constraints -> one generated checker each -> sandboxed runs.

1. The constraint analyzer lists the instruction's explicit constraints, one `...Checker: ...`
   line each (order kept, duplicates dropped, at most `max_checkers`).
2. Optionally (`verify_gate`) it is asked whether each one can be checked by code on the surface
   form of the text; "no" drops it (the reply is parsed leniently, not as one exact token).
3. The coder writes `check_following(response) -> bool` per constraint. The code must pass the
   static policy (`sandbox.source_problems`) and a sandboxed dry run that returns a bool; on
   failure the error goes back to the coder for up to `repair_rounds` fixes, and the last fix is
   tested too (the reference dropped it untested).
4. Every kept checker runs on every candidate in the sandbox. Score = share of checkers passed;
   no usable checker -> None (abstain), not the reference's 0.5.
Checkers are built once per instruction (the last MEMO_SIZE are kept in memory; the LLM replies are
cached on disk) and reused for all its candidates.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass

from rm_exps.agentic.client import ChatClient, LLMError
from rm_exps.agentic.sandbox import SandboxError, SandboxLimits, run_checker, sandbox_status, source_problems
from rm_exps.agentic.signals import Signal, code_block

NAME = "instruction_following"
MEMO_SIZE = 1024  # instructions whose checkers are kept in memory (a long-running service sees many)
DRY_RUN_TEXT = "This is for a test."
DEFAULT_LIMITS = SandboxLimits()  # frozen, so one shared default is safe

EXTRACT_PROMPT = (
    "List the hard constraints of the instruction below: explicit requirements on the form of the "
    "response that can be checked, such as length, number of words, sentences, paragraphs or sections, "
    "keywords to include or avoid, format, letter case, punctuation, or required start or end.\n"
    'Write one line per constraint as "<Name>Checker: <what must hold>", for example '
    '"NumberOfWordsChecker: at least 300 words".\n'
    "Only constraints the instruction states explicitly; nothing about the topic, quality, correctness "
    "or implied style. If there are none, write NONE.\n"
    "\n"
    "Instruction:\n"
    "{instruction}"
)

GATE_PROMPT = (
    "Can the following constraint be checked by a short deterministic Python function that looks only "
    "at the surface form of a text (its words, characters, punctuation, layout)? Answer yes or no.\n"
    "\n"
    "Constraint: {constraint}"
)

CODE_PROMPT = (
    "Write a Python function `check_following(response: str) -> bool` that returns True exactly when "
    "the response satisfies the constraint below.\n"
    "Use only these standard modules: {modules}. No file, network or system access, no printing. Write "
    "it for any response (for example with regular expressions), not for one example. Reply with the "
    "code only.\n"
    "\n"
    "Instruction:\n"
    "{instruction}\n"
    "\n"
    "Constraint: {constraint}"
)

REPAIR_PROMPT = """This checker for the constraint "{constraint}" fails: {error}
Fix it. Reply with the corrected code only.

```python
{code}
```"""


def parse_constraints(text: str, limit: int) -> list[str]:
    """The `...Checker: ...` lines of the analyzer's reply, bullets stripped, in order, unique."""
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
    return list(dict.fromkeys(line for line in lines if "Checker" in line and ":" in line))[:limit]


def parse_yes_no(text: str) -> bool | None:
    word = re.search(r"[A-Za-z]+", re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL))
    answer = word.group(0).lower() if word else ""
    return True if answer == "yes" else False if answer == "no" else None


@dataclass
class Checker:
    constraint: str
    code: str | None  # None: dropped
    reason: str | None = None  # why it was dropped
    attempts: int = 0  # code generations (1 + repairs)


class InstructionFollowingVerifier:
    name = NAME

    def __init__(
        self,
        analyzer: ChatClient,
        coder: ChatClient,
        limits: SandboxLimits = DEFAULT_LIMITS,
        max_checkers: int = 8,
        verify_gate: bool = True,
        repair_rounds: int = 2,
    ):
        self.analyzer, self.coder, self.limits = analyzer, coder, limits
        self.max_checkers, self.verify_gate, self.repair_rounds = max_checkers, verify_gate, repair_rounds
        self._checkers: dict[str, list[Checker]] = {}
        self._lock = threading.Lock()

    def checkers(self, instruction: str) -> list[Checker]:
        """The instruction's checkers (kept and dropped), built once. Raises LLMError from the analyzer."""
        with self._lock:
            if instruction in self._checkers:
                return self._checkers[instruction]
        reply = self.analyzer.complete(
            [{"role": "user", "content": EXTRACT_PROMPT.format(instruction=instruction)}], max_tokens=512
        )
        checkers = [self._build(instruction, c) for c in parse_constraints(reply, self.max_checkers)]
        with self._lock:
            self._checkers[instruction] = checkers
            while len(self._checkers) > MEMO_SIZE:
                del self._checkers[next(iter(self._checkers))]
        return checkers

    def _build(self, instruction: str, constraint: str) -> Checker:
        try:
            if self.verify_gate:
                verdict = parse_yes_no(
                    self.analyzer.complete(
                        [{"role": "user", "content": GATE_PROMPT.format(constraint=constraint)}], max_tokens=8
                    )
                )
                if verdict is not True:
                    return Checker(
                        constraint, None, "not checkable by code" if verdict is False else "unclear gate reply"
                    )
            prompt = CODE_PROMPT.format(
                modules=", ".join(self.limits.modules), instruction=instruction, constraint=constraint
            )
            code = code_block(self.coder.complete([{"role": "user", "content": prompt}], max_tokens=1024))
            attempts = 1
            while (error := self.dry_run(code)) is not None:
                if attempts > self.repair_rounds:
                    return Checker(
                        constraint,
                        None,
                        f"failed its dry run after {self.repair_rounds} repairs: {error}",
                        attempts=attempts,
                    )
                repair = REPAIR_PROMPT.format(constraint=constraint, error=error, code=code.strip())
                code = code_block(self.coder.complete([{"role": "user", "content": repair}], max_tokens=1024))
                attempts += 1
            return Checker(constraint, code, attempts=attempts)
        except LLMError as e:
            return Checker(constraint, None, str(e))

    def dry_run(self, code: str) -> str | None:
        """Why `code` is not a usable checker, or None: static policy, then one sandboxed call that
        must return a bool."""
        problems = source_problems(code, self.limits.modules)
        if problems:
            return "; ".join(problems)
        return run_checker(code, [DRY_RUN_TEXT], self.limits).outcomes[0].error

    def score(self, instruction: str, candidates: list[str]) -> Signal:
        """Raises nothing for a missing sandbox: the signal is then not scored and says why."""
        if not self.limits.allow_unsandboxed and (problem := sandbox_status()[1]):
            return Signal(NAME, [None] * len(candidates), errors=[f"cannot run checkers: {problem}"])
        try:
            return self._score(instruction, candidates)
        except SandboxError as e:
            return Signal(NAME, [None] * len(candidates), errors=[f"cannot run checkers: {e}"])

    def _score(self, instruction: str, candidates: list[str]) -> Signal:
        try:
            checkers = self.checkers(instruction)
        except LLMError as e:
            return Signal(NAME, [None] * len(candidates), errors=[str(e)])
        kept = [c for c in checkers if c.code is not None]
        results = []
        for checker in kept:
            run = run_checker(checker.code, candidates, self.limits)
            results.append(
                {
                    "constraint": checker.constraint,
                    "passed": [o.passed for o in run.outcomes],
                    "errors": [o.error for o in run.outcomes],
                }
            )
        scores = (
            [sum(r["passed"][i] for r in results) / len(results) for i in range(len(candidates))]
            if results
            else [None] * len(candidates)
        )
        details = {
            "checkers": results,
            "dropped": [asdict(c) for c in checkers if c.code is None],
            "code": {c.constraint: c.code for c in kept},
        }
        return Signal(NAME, scores, details)
