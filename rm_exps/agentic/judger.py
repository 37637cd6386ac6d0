"""The judger: pick the best candidate from a reward model's scores and the verifier signals.

`weighted_sum` (`combine`): score = λ·normalize(r_RM) + Σ_i w_i·signal_i. A signal with any
unscored (None) candidate is left out for the whole instruction and reported, so all candidates
of one instruction are always compared on the same terms. The winner is the highest
score; ties are broken by the raw RM score, then by the lowest index, and reported (`tied`).
Callers that randomize candidate placement (the agentic evaluation does, per item) thereby make the
last tie-break random but reproducible.

`llm` (`LLMJudger`): the judge model sees the instruction, two answers and their signals and
answers [[A]] or [[B]] (the reference's priority: factual errors, then constraints, then the RM).
Which candidate is shown as A is drawn per pair from Random(f"{seed}:{instruction, both answers}"),
so position bias is not systematic. More than two candidates play a knockout (listwise.knockout's
bracket: neighbours 0-1, 2-3, ... per round, an odd one out advances); a candidate's score is the
number of rounds it survived, so the winner's is the unique maximum and ties cannot happen. A reply
without exactly one of the two tags is an LLMResponseError; any LLMError fails the judgement
(`best` None, `error` set), never a default pick.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rm_exps.agentic.client import ChatClient, LLMError, LLMResponseError
from rm_exps.agentic.items import placement
from rm_exps.agentic.signals import Signal


def normalize(values: Sequence[float], how: str) -> list[float]:
    """Per-instruction normalization over the candidates: "none", "zscore" (population std) or
    "minmax" to [0, 1]. Constant values map to 0."""
    values = [float(v) for v in values]
    if how == "none" or not values:
        return values
    if how == "zscore":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [(v - mean) / std if std > 0 else 0.0 for v in values]
    if how == "minmax":
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.0 for v in values]
    raise ValueError(f"unknown normalization {how!r} (none, zscore, minmax)")


def select_best(scores: Sequence[float], tiebreak: Sequence[float] | None = None) -> int:
    """Index of the best candidate: highest score, then highest tiebreak (e.g. the RM score), then
    lowest index. The best-of-N selection rule."""
    if not scores:
        raise ValueError("select_best needs at least one score")
    key = lambda i: (scores[i], tiebreak[i] if tiebreak is not None else 0.0, -i)
    return max(range(len(scores)), key=key)


@dataclass
class Judgement:
    scores: list[float]  # combined (llm: rounds survived), index-aligned with the candidates
    best: int | None  # None: the judgement failed (see error)
    tied: bool  # the best combined score is shared (broken by the RM score / index)
    used: list[str]  # signals that entered the score
    dropped: dict[str, str] = field(default_factory=dict)  # signal -> why it was left out
    error: str | None = None  # llm: why no candidate could be picked
    matches: list[dict] = field(default_factory=list)  # llm: {"pair", "shown" (A, B), "winner", "reply"}


def combine(
    rm_scores: Sequence[float] | None,
    signals: Sequence[Signal],
    rm_weight: float = 1.0,
    weights: dict[str, float] | None = None,
    normalization: str = "none",
) -> Judgement:
    """The judger. `rm_scores` None: verifiers only. Weights default to 1 per signal."""
    n = len(rm_scores) if rm_scores is not None else len(signals[0].scores) if signals else 0
    total = [0.0] * n
    used, dropped = [], {}
    if rm_scores is not None:
        total = [rm_weight * v for v in normalize(rm_scores, normalization)]
        used.append("rm")
    for signal in signals:
        if len(signal.scores) != n:
            raise ValueError(f"signal {signal.name} has {len(signal.scores)} scores for {n} candidates")
        if not signal.complete:
            missing = [i for i, s in enumerate(signal.scores) if s is None]
            dropped[signal.name] = f"candidates {missing} not scored" + (
                f": {signal.errors[0]}" if signal.errors else ""
            )
            continue
        weight = (weights or {}).get(signal.name, 1.0)
        total = [t + weight * s for t, s in zip(total, signal.scores)]
        used.append(signal.name)
    best = select_best(total, rm_scores)
    return Judgement(total, best, sum(t == total[best] for t in total) > 1, used, dropped)


JUDGE_PROMPT = (
    "You are judging which of two answers to an instruction is better. Verifiers have checked both "
    "answers; use their results and your own reading.\n"
    "Decide by these rules, in order:\n"
    "1. Factuality: do not choose the answer with more factual errors about the world.\n"
    "2. Constraints: if they are equally factual, choose the answer that satisfies more of the "
    "instruction's constraints.\n"
    "3. Human preference: if they are still equal, choose the answer with the higher reward-model score.\n"
    "End your reply with exactly one verdict: [[A]] if Answer A is better, [[B]] if Answer B is "
    "better. Never write both.\n"
    "\n"
    "Instruction:\n"
    "{instruction}\n"
    "\n"
    "Answer A:\n"
    "{a}\n"
    "\n"
    "Answer B:\n"
    "{b}\n"
    "\n"
    "Verifier results for A:\n"
    "{signals_a}\n"
    "\n"
    "Verifier results for B:\n"
    "{signals_b}"
)

VERDICT = re.compile(r"\[\[\s*([AB])\s*\]\]")


def parse_verdict(text: str) -> str:
    """ "A" or "B": the reply must hold exactly one of the two tags (repeats allowed), else
    LLMResponseError (the reference's substring test let [[A]] win when both appeared)."""
    tags = set(VERDICT.findall(text))
    if len(tags) != 1:
        raise LLMResponseError(
            "judge", f"expected exactly one of [[A]] / [[B]], found {sorted(tags) or 'none'} in {text[-200:]!r}"
        )
    return tags.pop()


def render_signals(signals: Sequence[Signal], rm: Sequence[float] | None, normalization: str, i: int) -> str:
    """Candidate i's verifier results as lines a judge can read ("n/a" when a verifier could not score it)."""
    lines = []
    for signal in signals:
        value = signal.scores[i]
        if signal.name == "factuality":
            lines.append(
                "- factual accuracy: " + ("n/a" if value is None else f"{value:.2f} (1.00 = no factual errors found)")
            )
        elif signal.name == "instruction_following":
            checkers = signal.details.get("checkers", [])
            if value is None or not checkers:
                lines.append("- constraints satisfied: n/a")
            else:
                each = "; ".join(f"{c['constraint']}: {'yes' if c['passed'][i] else 'no'}" for c in checkers)
                satisfied = sum(bool(c["passed"][i]) for c in checkers)
                lines.append(f"- constraints satisfied: {satisfied} of {len(checkers)} ({each})")
    if rm is None:
        lines.append("- reward model score: n/a")
    else:
        lines.append(f"- reward model score (human preference, normalization {normalization}): {rm[i]:.3f}")
    return "\n".join(lines)


class LLMJudger:
    """`judge(instruction, candidates, signals, rm_scores)` -> Judgement, by the judge model (module doc)."""

    def __init__(self, client: ChatClient, seed: int = 0, normalization: str = "none"):
        self.client, self.seed, self.normalization = client, seed, normalization

    def match(
        self,
        instruction: str,
        candidates: Sequence[str],
        signals: Sequence[Signal],
        rm: list[float] | None,
        i: int,
        j: int,
    ) -> dict:
        """One pairwise judgment of candidates i < j; raises LLMError."""
        a, b = (
            (i, j)
            if placement(2, self.seed, "\0".join((instruction, candidates[i], candidates[j])))[0] == 0
            else (j, i)
        )
        prompt = JUDGE_PROMPT.format(
            instruction=instruction,
            a=candidates[a],
            b=candidates[b],
            signals_a=render_signals(signals, rm, self.normalization, a),
            signals_b=render_signals(signals, rm, self.normalization, b),
        )
        reply = self.client.complete([{"role": "user", "content": prompt}], max_tokens=512)
        return {"pair": [i, j], "shown": [a, b], "winner": a if parse_verdict(reply) == "A" else b, "reply": reply}

    def judge(
        self, instruction: str, candidates: Sequence[str], signals: Sequence[Signal], rm_scores: Sequence[float] | None
    ) -> Judgement:
        n = len(candidates)
        rm = normalize(rm_scores, self.normalization) if rm_scores is not None else None
        used = (["rm"] if rm is not None else []) + [s.name for s in signals]
        survived, matches, alive = [0.0] * n, [], list(range(n))
        try:
            while len(alive) > 1:
                played = [
                    self.match(instruction, candidates, signals, rm, alive[k], alive[k + 1])
                    for k in range(0, len(alive) - 1, 2)
                ]
                matches += played
                alive = [m["winner"] for m in played] + ([alive[-1]] if len(alive) % 2 else [])
                for k in alive:
                    survived[k] += 1
        except LLMError as e:
            return Judgement([0.0] * n, None, False, used, error=str(e), matches=matches)
        return Judgement(survived, alive[0] if n else None, False, used, matches=matches)
