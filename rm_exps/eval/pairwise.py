"""Pairwise evaluation: score chosen and rejected responses of every evaluation set."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from rm_exps.objectives.base import Objective
from rm_exps.progress import progress


class PairwiseEvaluator:
    """For each named loader (`train`, `test`, `{name}_{split}`), the objective's rewards of all
    pairs, gathered across processes without the padded tail, summarized by the objective
    (loss, accuracy, normalized abs reward margin, chosen/rejected reward)."""

    def __init__(self, objective: Objective, loaders: dict[str, DataLoader]):
        self.objective = objective
        self.loaders = loaders

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        model.eval()
        metrics: dict[str, float] = {}
        for key, loader in self.loaders.items():
            chosen, rejected = [], []
            for batch in progress(loader, desc=f"eval {key}", enabled=accelerator.is_main_process):
                r_c, r_r = self.objective.rewards(model, batch)
                r_c, r_r = accelerator.gather_for_metrics((r_c.float(), r_r.float()))
                chosen.append(r_c.cpu())
                rejected.append(r_r.cpu())
            metrics.update(self.objective.eval_metrics(f"eval {key}", torch.cat(chosen), torch.cat(rejected)))
        return metrics
