"""SFT: maximum likelihood of the chosen response."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rm_exps.batching import model_inputs, split_pair
from rm_exps.models import load_model
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.modules import SequenceLogProb


@register
class SFT(Objective):
    """Loss: -mean log pi(chosen|x), summed over response tokens. The "reward" of a response is its
    log-probability, so the evaluators report `chosen logprobs` / `rejected logprobs`."""

    name = "sft"
    trains_policy = True

    def build_model(self) -> nn.Module:
        return SequenceLogProb(
            load_model(self.config.model, AutoModelForCausalLM, self.tokenizer, **self.load_kwargs())
        )

    def loss(self, model, batch):
        logp_c, logp_r = split_pair(model(**model_inputs(batch)))
        loss = -logp_c.mean()
        return loss, {
            "loss": loss.detach().float(),
            "chosen logprobs": logp_c.detach().float().mean(),
            "rejected logprobs": logp_r.detach().float().mean(),
        }

    def eval_metrics(
        self, prefix: str, r_c: torch.Tensor, r_r: torch.Tensor, **extras: torch.Tensor
    ) -> dict[str, float]:
        return {
            f"{prefix} loss": -r_c.double().mean().item(),
            f"{prefix} chosen logprobs": r_c.double().mean().item(),
            f"{prefix} rejected logprobs": r_r.double().mean().item(),
        }
