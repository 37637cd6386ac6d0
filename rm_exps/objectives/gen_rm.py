"""GEN-RM: a generative verifier that answers "Is the answer correct (Yes/No)?"."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rm_exps.batching import model_inputs, split_pair
from rm_exps.models import load_model
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.modules import NextTokenLogProbs


def single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"gen_rm needs {text!r} to be one token of the model's vocabulary; it encodes to {ids}")
    return ids[0]


@register
class GenerativeRM(Objective):
    """The prompt "Question: {x}\\nAnswer: {y}\\nVerification: Is the answer correct (Yes/No)?" as one user
    turn; the next-token distribution after the generation prompt is read at the Yes and No ids.
    Loss: cross-entropy on Yes for the chosen response and No for the rejected one.
    Reward: p(Yes). (Its evaluation "loss" is the Bradley-Terry loss on p(Yes), as in the reference.)"""

    name = "gen_rm"
    input_format = "verification"

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.yes_no_ids = [single_token_id(tokenizer, "Yes"), single_token_id(tokenizer, "No")]

    def build_model(self) -> nn.Module:
        return NextTokenLogProbs(
            load_model(self.config.model, AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()), self.yes_no_ids
        )

    def scores(self, model, batch):
        return model(**model_inputs(batch))[:, 0].exp()

    def loss(self, model, batch):
        logp = model(**model_inputs(batch))
        yes_c, _ = split_pair(logp[:, 0])
        _, no_r = split_pair(logp[:, 1])
        loss = -torch.cat([yes_c, no_r]).mean()
        return loss, self.train_metrics(loss, yes_c.exp(), split_pair(logp[:, 0].exp())[1])
