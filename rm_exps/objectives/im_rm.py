"""IM-RM: the implicit reward model of DPO, a log-likelihood ratio against a frozen reference."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rm_exps.models import load_model
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.modules import SequenceLogProb


@register
class ImplicitRM(Objective):
    """r(x, y) = kl_coeff * (log pi(y|x) - log pi_ref(y|x)), log-probabilities summed over the response
    tokens (end-of-turn included); with `no_ref_model`, r = kl_coeff * log pi(y|x). pi_ref is the
    initial model, frozen. Loss: -log sigmoid(r_c - r_r)."""

    name = "im_rm"

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.reference: nn.Module | None = None

    def build_model(self) -> nn.Module:
        policy = SequenceLogProb(load_model(self.config.model, AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()))
        if not self.config.no_ref_model:
            # An exact copy: rows that a vocabulary resize initialized at random must match too.
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        return policy

    def setup(self, device: torch.device) -> None:
        if self.reference is not None and not self.config.model_parallel_without_accelerate:
            self.reference.to(device)

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logp = model(**batch)
        if self.reference is not None:
            with torch.no_grad():
                ref_logp = self.reference(**batch).to(logp.device)
            logp = logp - ref_logp
        return self.config.kl_coeff * logp
