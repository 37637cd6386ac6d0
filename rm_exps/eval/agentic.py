"""Agentic evaluation: a trained reward model (any objective) combined with the reward agent's verifiers.

Data: items {instruction, candidates, label[, id, subset]} (rm_exps.agentic.items); `label` is the
index of the preferred (correct) candidate.

RM scores: per-row objectives score each candidate on its own (candidates paired two by two only to
use the pair interface). A pairwise-only objective (`Objective.pairwise_only`, e.g. gram_judge, whose
reward is a verdict on its pair) judges every pair of candidates, and a candidate's RM score is its mean
win probability against the others, mean_j P(i beats j) (`preference_probability`; for two candidates
the pair's own value), so scores of one item are comparable.

Per item, the candidates are placed in an order drawn from Random(f"{seed}:{id}") (the reference
always put chosen in slot B), the verifiers run once (their signals are kept across validations),
the objective's rewards are computed at every validation, and the judger combines them. Results
are mapped back to the original order, so everything stays index-aligned with the data.

Metrics (`eval agentic ...`): `{subset} accuracy` and `accuracy` (micro over items): the preferred
candidate's combined score against each other candidate, a tie counting 1/2 (for two candidates,
pairwise accuracy); `macro accuracy` (mean over subsets); the same for the RM alone as
`{subset} rm accuracy` / `rm accuracy`; `best-of-n accuracy` (select_best picks the label);
`ties` (share of items whose best combined score is shared); `items with verifier errors`;
`items with judge errors` (the llm judger could not pick: the item counts as wrong, 0, in accuracy
and best-of-n; its LLMError is in the item's `errors`).
Per-item results go to `agentic_items.jsonl` in the run folder.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rm_exps.agentic.config import AgenticEvalConfig
from rm_exps.agentic.items import Item, load_items
from rm_exps.batching import PairCollator, encode_pairs

PREFIX = "eval agentic"


def pairwise_accuracy_of(scores: list[float], label: int) -> float:
    """The label's score against every other candidate's: 1 if higher, 1/2 if equal, averaged."""
    others = [s for i, s in enumerate(scores) if i != label]
    return sum(1.0 if scores[label] > s else 0.5 if scores[label] == s else 0.0 for s in others) / len(others)


class AgenticEvaluator:
    """`evaluate(model, accelerator)` -> the `eval agentic ...` metrics (see the module doc)."""

    def __init__(
        self,
        objective: Any,
        tokenizer: Any,
        agent: Any,
        items: list[Item],
        seed: int,
        batch_size: int,
        output_path: Path | None = None,
    ):
        self.objective, self.agent, self.items, self.seed = objective, agent, items, seed
        self.output_path = output_path
        self.placements = [item.placement(seed) for item in items]
        # RM rows: candidates of one item paired two by two (an odd last one with itself); for a pairwise-only
        # objective (its rewards are verdicts on their pair) every pair i < j, see `rm_scores`.
        self.pairwise = bool(getattr(objective, "pairwise_only", False))
        self.rows, records = [], []
        for k, item in enumerate(items):
            n = len(item.candidates)
            pairs = (
                [(i, j) for i in range(n) for j in range(i + 1, n)]
                if self.pairwise
                else [(i, min(i + 1, n - 1)) for i in range(0, n, 2)]
            )
            for i, j in pairs:
                self.rows.append((k, i, j))
                records.append(
                    {"prompt": item.instruction, "chosen": item.candidates[i], "rejected": item.candidates[j]}
                )
        encoded = encode_pairs(records, tokenizer, objective.input_format)
        self.loaders = {
            "agentic": DataLoader(encoded, batch_size=batch_size, collate_fn=PairCollator(tokenizer.pad_token_id))
        }
        self._prepared: Any = None
        self._verifications: list[Any] | None = None

    def verifications(self) -> list[Any]:
        """The agent's verification of every item, in placed order; computed once."""
        if self._verifications is None:

            def verify(k: int) -> Any:
                item = self.items[k]
                return self.agent.verify(item.instruction, [item.candidates[i] for i in self.placements[k]])

            with ThreadPoolExecutor(self.agent.config.workers) as pool:
                self._verifications = list(pool.map(verify, range(len(self.items))))
        return self._verifications

    @torch.inference_mode()
    def rm_scores(self, model: Any, accelerator: Any) -> list[list[float]]:
        if self._prepared is None:
            self._prepared = accelerator.prepare(self.loaders["agentic"])
        model.eval()
        chosen, rejected = [], []
        for batch in self._prepared:
            r_c, r_r = self.objective.rewards(model, batch)
            if self.pairwise:  # P(i beats j), P(j beats i) of the pair's verdict
                r_c, r_r = (
                    self.objective.preference_probability(r_c, r_r),
                    self.objective.preference_probability(r_r, r_c),
                )
            r_c, r_r = accelerator.gather_for_metrics((r_c.float(), r_r.float()))
            chosen += r_c.cpu().tolist()
            rejected += r_r.cpu().tolist()
        scores = [[0.0] * len(item.candidates) for item in self.items]
        for (k, i, j), c, r in zip(self.rows, chosen, rejected):
            if self.pairwise:  # mean win probability against the other candidates
                n = len(self.items[k].candidates)
                scores[k][i] += c / (n - 1)
                scores[k][j] += r / (n - 1)
            else:
                scores[k][i], scores[k][j] = c, r
        return scores

    def evaluate(self, model: Any, accelerator: Any) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list

        rm = self.rm_scores(model, accelerator)
        results = [None]
        if accelerator.is_main_process:
            results = [self._judge(rm)]
        if accelerator.num_processes > 1:
            broadcast_object_list(results)
        metrics, rows = results[0]
        if accelerator.is_main_process and self.output_path is not None:
            self.output_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return metrics

    def _judge(self, rm: list[list[float]]) -> tuple[dict[str, float], list[dict]]:
        per_subset: dict[str, dict[str, list[float]]] = {}
        rows = []
        for k, (item, verification) in enumerate(zip(self.items, self.verifications())):
            order = self.placements[k]
            judgement = self.agent.judge(verification, [rm[k][i] for i in order])
            combined = [0.0] * len(order)
            for placed, original in enumerate(order):
                combined[original] = judgement.scores[placed]
            failed = judgement.best is None
            best = None if failed else order[judgement.best]
            verifier_errors = verification.errors + [e for s in verification.signals for e in s.errors]
            errors = verifier_errors + ([judgement.error] if failed else [])
            stats = per_subset.setdefault(
                item.subset, {"acc": [], "rm": [], "bon": [], "tied": [], "errors": [], "judge_errors": []}
            )
            stats["acc"].append(0.0 if failed else pairwise_accuracy_of(combined, item.label))
            stats["rm"].append(pairwise_accuracy_of(rm[k], item.label))
            stats["bon"].append(float(best == item.label))
            stats["tied"].append(float(judgement.tied))
            stats["errors"].append(float(bool(verifier_errors)))
            stats["judge_errors"].append(float(failed))
            signals = {s.name: [s.scores[order.index(i)] for i in range(len(order))] for s in verification.signals}
            rows.append(
                {
                    "id": item.id,
                    "subset": item.subset,
                    "label": item.label,
                    "placement": order,
                    "rm_scores": rm[k],
                    "signals": signals,
                    "combined": combined,
                    "best": best,
                    "tied": judgement.tied,
                    "used": judgement.used,
                    "dropped": judgement.dropped,
                    "routed": verification.routed,
                    "errors": errors,
                    "matches": [
                        {
                            **m,
                            "pair": [order[i] for i in m["pair"]],
                            "shown": [order[i] for i in m["shown"]],
                            "winner": order[m["winner"]],
                        }
                        for m in judgement.matches
                    ],
                    "details": {s.name: s.details for s in verification.signals},
                }
            )
        mean = lambda values: sum(values) / len(values)
        every = {
            key: [v for s in per_subset.values() for v in s[key]]
            for key in ("acc", "rm", "bon", "tied", "errors", "judge_errors")
        }
        metrics = {}
        for subset, stats in sorted(per_subset.items()):
            metrics[f"{PREFIX} {subset} accuracy"] = mean(stats["acc"])
            metrics[f"{PREFIX} {subset} rm accuracy"] = mean(stats["rm"])
        metrics.update(
            {
                f"{PREFIX} accuracy": mean(every["acc"]),
                f"{PREFIX} macro accuracy": mean([mean(s["acc"]) for s in per_subset.values()]),
                f"{PREFIX} rm accuracy": mean(every["rm"]),
                f"{PREFIX} best-of-n accuracy": mean(every["bon"]),
                f"{PREFIX} ties": mean(every["tied"]),
                f"{PREFIX} items with verifier errors": mean(every["errors"]),
                f"{PREFIX} items with judge errors": mean(every["judge_errors"]),
            }
        )
        return metrics, rows


def agentic_evaluator(
    config: AgenticEvalConfig, objective: Any, tokenizer: Any, batch_size: int, run_dir: Path
) -> AgenticEvaluator:
    """The evaluator of a run's `agentic` settings."""
    from rm_exps.agentic.agent import RewardAgent

    agent = RewardAgent(config)
    return AgenticEvaluator(
        objective,
        tokenizer,
        agent,
        load_items(config.data, config.num_samples),
        config.seed,
        batch_size,
        Path(run_dir) / "agentic_items.jsonl",
    )
