"""GRAM (Wang et al., ICML 2025): a generative pairwise reward model trained in two stages.

Stage 1 (`gram_pretrain`) learns to generate both answers of an unlabeled pair in the A/B-tagged
layout; stage 2 (`gram_judge`) fine-tunes it to emit the verdict token `A` or `B`. Both answers
sit in one row (batching's "two_answers" and "judge" formats); the two rows of a pair in an
evaluation batch are its two presentation orders (chosen answer in slot A, then in slot B).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM

from rm_exps.batching import (
    GRAM_JUDGE_TEMPLATE,
    GRAM_TEMPLATE_KWARGS,
    VERDICT_TOKENS,
    OrderCollator,
    judge_text,
    model_inputs,
    render_chat,
    split_pair,
)
from rm_exps.eval.metrics import pairwise_metrics
from rm_exps.models import load_model
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.gen_rm import single_token_id
from rm_exps.objectives.modules import NextTokenLogProbs, SequenceLogProb


def check_verdict_slot(tokenizer: Any, verdict_ids: list[int]) -> None:
    """Training reads the verdict where inference does: the judge prompt rendered with the generation
    prompt must be a token prefix of the conversation whose assistant turn is the verdict, and the
    next token must be the verdict id (catches templates that start the assistant turn differently,
    e.g. with a thinking block, or that merge the verdict into the previous token)."""
    prompt = tokenizer(judge_text(tokenizer, "q", "x", "y"), add_special_tokens=False)["input_ids"]
    for verdict, vid in zip(VERDICT_TOKENS, verdict_ids):
        conversation = [
            {"role": "user", "content": GRAM_JUDGE_TEMPLATE.format(prompt="q", a="x", b="y")},
            {"role": "assistant", "content": verdict},
        ]
        full_text = render_chat(tokenizer, conversation, **GRAM_TEMPLATE_KWARGS)
        full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        if full[: len(prompt) + 1] != prompt + [vid]:
            raise ValueError(
                f"gram_judge: with this chat template the assistant turn {verdict!r} does not start "
                f"right after the generation prompt as token {vid}; training and inference would "
                "read the verdict at different positions"
            )


class _Gram(Objective):
    def train_collator(self, pad_token_id: int) -> OrderCollator:
        return OrderCollator(pad_token_id, self.config.judge_order, self.config.random_seed)

    def _causal_lm(self) -> nn.Module:
        return load_model(self.config.model, AutoModelForCausalLM, self.tokenizer, **self.load_kwargs())


@register
class GramPretrain(_Gram):
    """Stage 1: next-token training on an unlabeled pair. Prompt x = the user turn
    "[User Question]\\n{question}\\n\\n"; target y = "[The Start of Assistant A's Answer]\\n{a}\\n[The End of
    Assistant A's Answer]\\n\\n[The Start of Assistant B's Answer]\\n{b}\\n[The End of Assistant B's Answer]"
    plus the template's end-of-turn suffix. Labels are ignored: (a, b) is (chosen, rejected) or the
    reverse, one order per pair by a seeded coin (`judge_order: random`) or both (`both`).
    Loss: token-mean negative log-likelihood over the target tokens (of the micro-batch; the trainer
    weighs micro-batches by their target tokens, so a step is the mean over its accumulation window),

        L = -(sum_rows sum_{t in y} log pi(y_t | x, y_<t)) / (number of target tokens),

    the prompt masked. Evaluation: `loss` = -mean over rows (both orders) of the per-token
    log-probability of the target; it does not rank answers, so no accuracy is reported."""

    name = "gram_pretrain"
    input_format = "two_answers"
    ranks_pairs = False

    def build_model(self) -> nn.Module:
        return SequenceLogProb(self._causal_lm())

    def loss(self, model, batch):
        logp = model(**model_inputs(batch))
        loss = -logp.sum() / self.loss_weight(batch)
        return loss, {"loss": loss.detach().float()}

    def loss_weight(self, batch):
        """The target tokens: an accumulated step is the token mean of its whole window, as the
        reference divides the summed NLL by every target token of the accumulation window."""
        return batch["response_mask"][:, 1:].sum()

    def scores(self, model, batch):
        """Per-token log-probability of each row's target."""
        return model(**model_inputs(batch)) / batch["response_mask"][:, 1:].sum(1)

    def eval_metrics(self, prefix, r_c, r_r, **extras):
        return {f"{prefix} loss": -torch.cat([r_c, r_r]).double().mean().item()}


@register
class GramJudge(_Gram):
    """Stage 2: the judge. The GRAM judge prompt (instruction, question, the answers in slots A and B,
    "#Preferred:") is one user turn; z = (z_A, z_B) are the logits of the tokens `A` and `B` at the
    position after the generation prompt, where the verdict is generated. With y = 0 when the better
    answer is in slot A and 1 when it is in slot B, and eps = `judge_label_smoothing`:

        L = mean_rows [ -(1 - eps/2) log softmax(z)_y - (eps/2) log softmax(z)_{1-y} ]
          = mean_rows [ -log sigmoid(d) + (eps/2) d ],  d = z_y - z_{1-y},

    a Bradley-Terry loss on the verdict margin plus a linear penalty (minimised at
    d = ln((2 - eps)/eps)), averaged over the rows of the micro-batch.

    Reward of a pair (x, y1, y2), scored in both orders:
        s(y1) = 1/2 [softmax(z^{y1,y2})_A + softmax(z^{y2,y1})_B],  s(y2) = 1 - s(y1).
    Evaluation: `loss` = -mean over both orders of log P(correct verdict); accuracy and rewards from s;
    plus `position consistency` (share of pairs whose verdict survives the swap) and
    `slot A rate` (share of verdicts, over both orders, that pick slot A)."""

    name = "gram_judge"
    input_format = "judge"
    pairwise_only = True  # s(chosen) is a verdict on its pair

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.verdict_ids = [single_token_id(tokenizer, t) for t in VERDICT_TOKENS]
        check_verdict_slot(tokenizer, self.verdict_ids)

    def build_model(self) -> nn.Module:
        return NextTokenLogProbs(self._causal_lm(), self.verdict_ids)

    def verdict_log_probs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log softmax over (z_A, z_B) per row, [R, 2]. (NextTokenLogProbs gives vocabulary log-probs; the
        two-way softmax of those equals the two-way softmax of the raw logits.)"""
        return F.log_softmax(model(**model_inputs(batch)).float(), dim=-1)

    def loss(self, model, batch):
        logp = self.verdict_log_probs(model, batch)
        half = logp.shape[0] // 2
        target = batch["order"] if "order" in batch else torch.arange(2, device=logp.device).repeat_interleave(half)
        loss = F.cross_entropy(logp, target, label_smoothing=self.config.judge_label_smoothing)
        correct = logp.gather(1, target[:, None]).squeeze(1)
        return loss, {
            "loss": loss.detach(),
            "accuracy": (correct > logp.gather(1, 1 - target[:, None]).squeeze(1)).float().mean(),
            "verdict prob": correct.detach().exp().mean(),
        }

    def order_probs(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """P(chosen wins) when it is shown in slot A, and when it is shown in slot B."""
        first, second = split_pair(self.verdict_log_probs(model, batch).exp())
        return first[:, 0], second[:, 1]

    def rewards(self, model, batch):
        p_first, p_second = self.order_probs(model, batch)
        s_chosen = (p_first + p_second) / 2
        return s_chosen, 1 - s_chosen

    def pair_outputs(self, model, batch):
        p_first, p_second = self.order_probs(model, batch)
        s_chosen = (p_first + p_second) / 2
        return {"chosen": s_chosen, "rejected": 1 - s_chosen, "p_first": p_first, "p_second": p_second}

    def preference_probability(self, r_a, r_b):
        return r_a  # s(a) is already P(a beats b); s(a) + s(b) = 1

    def eval_metrics(self, prefix, r_c, r_r, **extras):
        metrics = pairwise_metrics(prefix, r_c, r_r)
        if "p_first" in extras:
            p1, p2 = extras["p_first"].double(), extras["p_second"].double()
            metrics[f"{prefix} loss"] = -(p1.clamp_min(1e-12).log() + p2.clamp_min(1e-12).log()).mean().item() / 2
            metrics[f"{prefix} position consistency"] = ((p1 > 0.5) == (p2 > 0.5)).double().mean().item()
            metrics[f"{prefix} slot A rate"] = ((p1 > 0.5).double().mean() + (p2 < 0.5).double().mean()).item() / 2
        return metrics
