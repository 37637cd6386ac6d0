"""Pairwise evaluation: score chosen and rejected responses of every evaluation set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from rm_exps.eval.sections import pair_correct, subset_metrics
from rm_exps.objectives.base import Objective
from rm_exps.progress import progress


class PairwiseEvaluator:
    """For each named loader (`train`, `test`, `{name}_{split}`), the objective's per-pair outputs
    (chosen/rejected rewards and any extras), gathered across processes without the padded tail
    (loaders are not shuffled, so gathered pairs keep the dataset order), summarized by the
    objective (loss, accuracy, normalized abs reward margin, chosen/rejected reward, ...). Sets with
    `subsets` (one label per pair) also get per-subset accuracy and RewardBench sections."""

    def __init__(
        self, objective: Objective, loaders: dict[str, DataLoader], subsets: dict[str, Sequence[str]] | None = None
    ):
        self.objective = objective
        self.loaders = loaders
        self.subsets = subsets or {}

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        model.eval()
        metrics: dict[str, float] = {}
        for key, loader in self.loaders.items():
            parts: dict[str, list[torch.Tensor]] = {}
            for batch in progress(loader, desc=f"eval {key}", enabled=accelerator.is_main_process):
                outputs = self.objective.pair_outputs(model, batch)
                outputs = accelerator.gather_for_metrics({k: v.float() for k, v in outputs.items()})
                for name, value in outputs.items():
                    parts.setdefault(name, []).append(value.cpu())
            values = {name: torch.cat(v) for name, v in parts.items()}
            chosen, rejected = values.pop("chosen"), values.pop("rejected")
            metrics.update(self.objective.eval_metrics(f"eval {key}", chosen, rejected, **values))
            if key in self.subsets and self.objective.ranks_pairs:
                metrics.update(subset_metrics(f"eval {key}", self.subsets[key], pair_correct(chosen, rejected)))
        return metrics
