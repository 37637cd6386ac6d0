"""EX-RM: an explicit reward model, a linear head on the language model's hidden state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register

if TYPE_CHECKING:
    from torch import nn

transformers = LazyModule("transformers")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")


@register
class ExplicitRM(Objective):
    """r(x, y) = w . h(x, y), h the last layer's hidden state at the last real token (or, with
    `use_all_response_hidden_embeddings`, the head averaged over the response tokens); w has no
    bias. Loss: -log sigmoid(r_c - r_r)."""

    name = "ex_rm"
    supports_share_prompt = True

    def build_model(self) -> nn.Module:
        model = models.load_model(
            self.config.model,
            transformers.AutoModelForSequenceClassification,
            self.tokenizer,
            num_labels=1,
            **self.load_kwargs(),
        )
        return modules.ValueHeadReward(model, mean_over_response=self.config.use_all_response_hidden_embeddings)
