"""EX-RM: an explicit reward model, a linear head on the language model's hidden state."""

from __future__ import annotations

from torch import nn
from transformers import AutoModelForSequenceClassification

from rm_exps.models import load_model
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.modules import ValueHeadReward


@register
class ExplicitRM(Objective):
    """r(x, y) = w . h(x, y), h the last layer's hidden state at the last real token (or, with
    `use_all_response_hidden_embeddings`, the head averaged over the response tokens); w has no
    bias. Loss: -log sigmoid(r_c - r_r)."""

    name = "ex_rm"

    def build_model(self) -> nn.Module:
        model = load_model(
            self.config.model, AutoModelForSequenceClassification, self.tokenizer, num_labels=1, **self.load_kwargs()
        )
        return ValueHeadReward(model, mean_over_response=self.config.use_all_response_hidden_embeddings)
