"""Factuality verifier: for pairs of candidates, difference -> queries -> evidence -> scores.

List-wise: the candidates are compared in pairs chosen by `schedule_pairs` ("all" pairs, or
"round_robin": each candidate with its next k neighbours), so every candidate is compared at least
once (the reference sampled n random pairs and scored unsampled candidates 0). A candidate's score
is the mean of its pair scores in [0.1, 1]; a candidate whose every pair failed is None.

Per pair (answers shown as A and B in the given order):
1. the fact checker names the key contradiction as a list ([] -> no contradiction: both get 1.0
   and no further call is made);
2. it writes up to `max_queries` queries that would settle it;
3. an EvidenceSource answers them: `LLMKnowledge` (the model's own knowledge, the reference's
   "local" mode), `SearchEvidence` over any `SearchBackend`, or `NoEvidence`;
4. it rates each answer 1-10 as [[a]] and <<b>>; a reply without both is an LLMResponseError.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from rm_exps.agentic.client import ChatClient, LLMError, LLMResponseError
from rm_exps.agentic.signals import Signal, python_list

NAME = "factuality"

PAIR = "Question:\n{instruction}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"  # ends the pairwise prompts

DIFFERENCE_PROMPT = (
    "Two answers to the same question follow. Find the most important factual claim on which they "
    "contradict each other.\n"
    "Reply with a Python list holding one short sentence that describes the contradiction, or [] if "
    "they do not contradict each other.\n"
    "\n" + PAIR
)

QUERY_PROMPT = (
    "Two answers to the question below disagree: {difference}\n"
    "Write at most {max_queries} short search queries whose answers would settle this disagreement. "
    "Reply with a Python list of strings.\n"
    "\n"
    "Question:\n"
    "{instruction}"
)

EVIDENCE_PROMPT = "Answer factually and concisely from your own knowledge: {query}"

VERIFY_PROMPT = (
    "Rate the factual accuracy of each answer to the question on a scale from 1 (mostly wrong) to 10 "
    "(fully accurate), using the evidence.\n"
    "If the two answers say the same thing, give both 10.{shorter}\n"
    "Write the score of Answer A as [[score]] and the score of Answer B as <<score>>, then one "
    "sentence of explanation.\n"
    "\n"
    "Evidence:\n"
    "{evidence}\n"
    "\n" + PAIR
)

SHORTER_RULE = " If they are equally accurate, give the shorter one the higher score."


class SearchBackend(Protocol):
    """A web or local search: snippets for one query."""

    def search(self, query: str) -> list[str]: ...


class EvidenceSource(Protocol):
    def gather(self, queries: list[str]) -> list[str]: ...


class LLMKnowledge:
    """Evidence written by the fact checker from its own knowledge (nothing is retrieved)."""

    def __init__(self, client: ChatClient):
        self.client = client

    def gather(self, queries: list[str]) -> list[str]:
        return [
            self.client.complete([{"role": "user", "content": EVIDENCE_PROMPT.format(query=q)}], max_tokens=512)
            for q in queries
        ]


class SearchEvidence:
    """The first `per_query` snippets of a SearchBackend for each query."""

    def __init__(self, backend: SearchBackend, per_query: int = 5):
        self.backend, self.per_query = backend, per_query

    def gather(self, queries: list[str]) -> list[str]:
        return [snippet for q in queries for snippet in self.backend.search(q)[: self.per_query]]


class NoEvidence:
    def gather(self, queries: list[str]) -> list[str]:
        return []


def schedule_pairs(n: int, how: str = "all", rounds: int = 1) -> list[tuple[int, int]]:
    """Pairs (i, j), i != j, covering every one of n >= 2 candidates; "all": every i < j;
    "round_robin": (i, i + r mod n) for r in 1..rounds, duplicates removed."""
    if how == "all":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if how != "round_robin":
        raise ValueError(f"unknown pair schedule {how!r} (all, round_robin)")
    pairs: dict[frozenset, tuple[int, int]] = {}
    for r in range(1, min(rounds, n - 1) + 1):
        for i in range(n):
            pairs.setdefault(frozenset((i, (i + r) % n)), (i, (i + r) % n))
    return list(pairs.values())


def parse_scores(text: str) -> tuple[float, float]:
    """(a, b) / 10 from "[[a]]" and "<<b>>" (first of each), each within 1..10."""
    a = re.search(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", text)
    b = re.search(r"<<\s*(\d+(?:\.\d+)?)\s*>>", text)
    if not a or not b:
        raise LLMResponseError("fact_checker", f"no [[score]] and <<score>> in the reply {text[:200]!r}")
    values = float(a.group(1)), float(b.group(1))
    if not all(1 <= v <= 10 for v in values):
        raise LLMResponseError("fact_checker", f"scores {values} outside 1..10")
    return values[0] / 10, values[1] / 10


class FactualityVerifier:
    name = NAME

    def __init__(
        self,
        client: ChatClient,
        evidence: EvidenceSource | None = None,
        pairs: str = "all",
        rounds: int = 1,
        max_queries: int = 3,
        prefer_shorter: bool = False,
        workers: int = 4,
    ):
        self.client = client
        self.evidence = evidence if evidence is not None else LLMKnowledge(client)
        self.pairs, self.rounds, self.max_queries = pairs, rounds, max_queries
        self.prefer_shorter, self.workers = prefer_shorter, workers

    def _ask(self, prompt: str, max_tokens: int) -> str:
        return self.client.complete([{"role": "user", "content": prompt}], max_tokens=max_tokens)

    def compare(self, instruction: str, a: str, b: str) -> dict:
        """One pair: {"difference", "queries", "evidence", "scores": (a, b)}. Raises LLMError."""
        reply = self._ask(DIFFERENCE_PROMPT.format(instruction=instruction, a=a, b=b), 256)
        difference = python_list(reply)
        if difference is None:
            raise LLMResponseError("fact_checker", f"no list of contradictions in {reply[:200]!r}")
        if not difference:
            return {"difference": [], "queries": [], "evidence": [], "scores": (1.0, 1.0)}
        text = "; ".join(map(str, difference))
        reply = self._ask(
            QUERY_PROMPT.format(difference=text, max_queries=self.max_queries, instruction=instruction), 256
        )
        queries = [str(q) for q in (python_list(reply) or []) if str(q).strip()][: self.max_queries] or [text]
        evidence = self.evidence.gather(queries)
        verdict = self._ask(
            VERIFY_PROMPT.format(
                shorter=SHORTER_RULE if self.prefer_shorter else "",
                evidence="\n\n".join(evidence) or "(none)",
                instruction=instruction,
                a=a,
                b=b,
            ),
            512,
        )
        return {"difference": difference, "queries": queries, "evidence": evidence, "scores": parse_scores(verdict)}

    def score(self, instruction: str, candidates: list[str]) -> Signal:
        n = len(candidates)
        if n < 2:
            return Signal(NAME, [None] * n, errors=["factuality needs at least two candidates to compare"])
        pairs = schedule_pairs(n, self.pairs, self.rounds)
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self.compare, instruction, candidates[i], candidates[j]) for i, j in pairs]
        per_candidate: list[list[float]] = [[] for _ in range(n)]
        compared, errors = [], []
        for (i, j), future in zip(pairs, futures):
            try:
                result = future.result()
            except LLMError as e:
                errors.append(f"pair ({i}, {j}): {e}")
                continue
            per_candidate[i].append(result["scores"][0])
            per_candidate[j].append(result["scores"][1])
            compared.append({"pair": [i, j], **result})
        scores = [sum(s) / len(s) if s else None for s in per_candidate]
        return Signal(NAME, scores, {"pairs": compared}, errors)
