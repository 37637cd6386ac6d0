"""SFT: maximum likelihood of the chosen response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rm_exps.batching import model_inputs, split_pair
from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register

if TYPE_CHECKING:
    from torch import nn

torch = LazyModule("torch")
transformers = LazyModule("transformers")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")


@register
class SFT(Objective):
    """Loss: -mean log pi(chosen|x), summed over response tokens. The "reward" of a response is its
    log-probability, so the evaluators report `chosen logprobs` / `rejected logprobs`."""

    name = "sft"
    supports_share_prompt = True
    trains_policy = True

    def build_model(self) -> nn.Module:
        return modules.SequenceLogProb(
            models.load_model(
                self.config.model, transformers.AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()
            )
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
