"""List-wise use of a pairwise judge (GRAM digest §4): pick the best of N candidates, and reward a
response against a reference response.

A judge is any callable that takes a batch of comparisons `[(prompt, a, b), ...]` and returns
P(a beats b) for each, as a 1-D tensor. `ObjectiveJudge` makes one from any trained objective
(`gram_judge`: the swap-averaged verdict probability; reward models: Bradley-Terry on their rewards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rm_exps.batching import REF_LOGPS, PairCollator, encode_example, model_inputs

Comparison = tuple[str, str, str]  # (prompt, a, b)
Judge = Callable[[list[Comparison]], torch.Tensor]  # -> P(a beats b) per comparison


def linear_scan(judge: Judge, prompt: str, candidates: Sequence[str]) -> int:
    """Index of the best candidate by the README's scan: keep a champion, compare it with each next
    candidate in turn, replace it when the challenger wins (P < 1/2). n-1 sequential comparisons;
    with an intransitive judge the result can depend on the order."""
    _check(candidates)
    best = 0
    for i in range(1, len(candidates)):
        if float(judge([(prompt, candidates[best], candidates[i])])[0]) < 0.5:
            best = i
    return best


def knockout(judge: Judge, prompt: str, candidates: Sequence[str]) -> int:
    """Index of the winner of a knockout tournament: each round pairs neighbours (0-1, 2-3, ...), judges
    all its matches in one batch, and advances the winners (the first of a match wins a tie; an odd
    one out gets a bye). n-1 comparisons in ceil(log2 n) batched rounds."""
    _check(candidates)
    alive = list(range(len(candidates)))
    while len(alive) > 1:
        matches = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        p_first = judge([(prompt, candidates[a], candidates[b]) for a, b in matches])
        winners = [a if float(p) >= 0.5 else b for (a, b), p in zip(matches, p_first)]
        alive = winners + ([alive[-1]] if len(alive) % 2 else [])
    return alive[0]


def reference_reward(judge: Judge, prompt: str, reference: str, responses: Sequence[str]) -> torch.Tensor:
    """The ReMax-style reward of each response against a reference (e.g. the policy's greedy output):
    s(y) - 1/2 with s(y) = P(y beats the reference); 0 when y is as good as the reference."""
    if not responses:
        return torch.zeros(0)
    return judge([(prompt, y, reference) for y in responses]).double() - 0.5


def _check(candidates: Sequence[str]) -> None:
    if len(candidates) == 0:
        raise ValueError("best-of-N needs at least one candidate")


RowKey = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt ids, response ids) of one row


def reference_logps_by_row(examples: Sequence[dict[str, Any]]) -> dict[RowKey, float]:
    """The precomputed reference log-prob (`ref_logps`, IM-RM / DPO) of every row of encoded pair
    examples, keyed by the row's (prompt ids, response ids): a row's reference log-prob depends on
    that row only, so comparisons re-pairing the same responses can reuse it."""
    out: dict[RowKey, float] = {}
    for ex in examples:
        if REF_LOGPS in ex:
            for side, key in enumerate(("chosen_ids", "rejected_ids")):
                out[(tuple(ex["prompt_ids"]), tuple(ex[key]))] = ex[REF_LOGPS][side]
    return out


class ObjectiveJudge:
    """A judge backed by a trained objective and its model: the comparisons are encoded in the
    objective's input format (as training did), scored in batches of `batch_size` pairs, and turned
    into P(a beats b) by `objective.preference_probability`. `ref_logps` (see `reference_logps_by_row`)
    gives rows their precomputed reference log-probs: an IM-RM / DPO reference is released after
    `precompute`, so the comparisons must carry them (a comparison with a row missing from it goes
    to the live reference, if any)."""

    def __init__(
        self,
        objective: Any,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        max_answer_tokens: int = 0,
        ref_logps: dict[RowKey, float] | None = None,
    ):
        if not objective.ranks_pairs:
            raise ValueError(f"objective '{objective.name}' does not rank responses; it cannot judge")
        self.objective, self.model, self.tokenizer = objective, model, tokenizer
        self.batch_size, self.device, self.max_answer_tokens = batch_size, torch.device(device), max_answer_tokens
        self.collate = PairCollator(tokenizer.pad_token_id)
        self.ref_logps = ref_logps or {}

    def _with_ref_logps(self, encoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = [[(tuple(ex["prompt_ids"]), tuple(ex[k])) for k in ("chosen_ids", "rejected_ids")] for ex in encoded]
        if not self.ref_logps or not all(k in self.ref_logps for pair in keys for k in pair):
            return encoded
        return [{**ex, REF_LOGPS: tuple(self.ref_logps[k] for k in pair)} for ex, pair in zip(encoded, keys)]

    @torch.inference_mode()
    def __call__(self, comparisons: list[Comparison]) -> torch.Tensor:
        self.model.eval()
        out = []
        for start in range(0, len(comparisons), self.batch_size):
            chunk = comparisons[start : start + self.batch_size]
            encoded = [
                encode_example(
                    self.tokenizer,
                    {"prompt": x, "chosen": a, "rejected": b},
                    self.objective.input_format,
                    self.max_answer_tokens,
                )
                for x, a, b in chunk
            ]
            encoded = self._with_ref_logps(encoded)
            collated = self.collate(encoded)
            keep = {*model_inputs(collated), REF_LOGPS}  # the model's inputs and the rows' reference log-probs
            batch = {k: v.to(self.device) for k, v in collated.items() if k in keep}
            r_a, r_b = self.objective.rewards(self.model, batch)
            out.append(self.objective.preference_probability(r_a.double(), r_b.double()).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.double)
