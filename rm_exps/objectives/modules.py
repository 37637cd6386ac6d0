"""nn.Modules that turn a pair batch into one number per row, and the frozen models' computations.

Each wraps a transformers model and does the whole reward computation in `forward`, so that
DDP/DeepSpeed hooks see a single forward call. They apply the LM head only where it is needed
(response positions, or the last position), never at every prompt position. This module imports
torch at its top; the objective modules name it lazily (see rm_exps/lazy.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# Config attributes of models whose logits are post-processed after the LM head; those models take
# the plain full-logits path so that their log-probabilities stay exact.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")

LOGPROB_CHUNK = 1024  # response positions per LM-head chunk


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model itself, also when peft wraps it for LoRA (its layers are adapted in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM / score head (`base_model` of a transformers model)."""
    return unwrap(model).base_model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


def _head_logprobs(lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = LOGPROB_CHUNK
) -> torch.Tensor:
    """log p(label) for each row of `hidden` [T, H], via logsumexp, in chunks of positions.

    Under autograd each chunk is checkpointed, so at most one chunk of [chunk, vocab] logits is
    alive at a time instead of [T, vocab].
    """
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, y = hidden[start : start + chunk], labels[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_head_logprobs, lm_head, h, y, use_reentrant=False))
        else:
            parts.append(_head_logprobs(lm_head, h, y))
    return torch.cat(parts) if parts else hidden.new_zeros(0)


def _layout(position_ids: torch.Tensor | None, segment_lengths: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Model kwargs of a shared-prompt batch; `segment_lengths` reaches the attention function
    (objectives/attention.py), and attention implementations that do not know it ignore it."""
    layout = {"position_ids": position_ids}
    if segment_lengths is not None:
        layout["segment_lengths"] = segment_lengths
    return layout


def _hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    segment_lengths: torch.Tensor | None,
) -> torch.Tensor:
    """Last-layer hidden states, flattened to [rows * L, H] to match the batch's read-out indices."""
    out = decoder(model)(input_ids=input_ids, attention_mask=attention_mask, **_layout(position_ids, segment_lengths))
    return out.last_hidden_state.flatten(0, 1)


def _logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    segment_lengths: torch.Tensor | None,
) -> torch.Tensor:
    """Full-vocabulary logits, flattened to [rows * L, V] (models with logit post-processing only)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, **_layout(position_ids, segment_lengths))
    return out.logits.flatten(0, 1)


class SequenceLogProb(nn.Module):
    """Summed log-probability of the response tokens of each sequence: log pi(y|x).

    Every response token (end-of-turn included) at `target_pos` is scored by the hidden state at
    `target_pred` (its left neighbour, or the last prompt token), and summed into its sequence
    `target_row`; the batch layout (one row per sequence or a shared prompt) does not matter here.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.model = causal_lm
        config = causal_lm.config
        self.full_logits = any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        seq_end: torch.Tensor,
        target_pos: torch.Tensor,
        target_pred: torch.Tensor,
        target_row: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_lengths: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        labels = input_ids.flatten()[target_pos]
        if self.full_logits:
            logits = _logits(self.model, input_ids, attention_mask, position_ids, segment_lengths)[target_pred].float()
            per_token = logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        else:
            hidden = _hidden_states(self.model, input_ids, attention_mask, position_ids, segment_lengths)
            per_token = token_logprobs(unwrap(self.model).get_output_embeddings(), hidden[target_pred], labels)
        out = torch.zeros(seq_end.shape[0], device=per_token.device, dtype=per_token.dtype)
        return out.index_add(0, target_row, per_token)


class NextTokenLogProbs(nn.Module):
    """log p(token | sequence) for a few candidate tokens at the position after each sequence's last token."""

    def __init__(self, causal_lm: nn.Module, token_ids: list[int]):
        super().__init__()
        self.model = causal_lm
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.full_logits = any(getattr(causal_lm.config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        seq_end: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_lengths: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        if self.full_logits:
            logits = _logits(self.model, input_ids, attention_mask, position_ids, segment_lengths)[seq_end]
        else:
            hidden = _hidden_states(self.model, input_ids, attention_mask, position_ids, segment_lengths)
            logits = unwrap(self.model).get_output_embeddings()(hidden[seq_end])
        return F.log_softmax(logits.float(), dim=-1)[:, self.token_ids]


def score_head_name(seq_cls_model: nn.Module) -> str:
    """Attribute name of the value head of an AutoModelForSequenceClassification (`score` for decoders)."""
    for name in ("score", "classifier"):
        if isinstance(getattr(seq_cls_model, name, None), nn.Linear):
            return name
    raise ValueError(f"{type(seq_cls_model).__name__} has no linear 'score' head; EX-RM needs a decoder model")


class ScoreHeadModel(nn.Module):
    """A sequence-classification model used for its linear value head (`head`), which the subclasses
    apply where they need it."""

    def __init__(self, seq_cls_model: nn.Module):
        super().__init__()
        self.model = seq_cls_model
        self.head_name = score_head_name(seq_cls_model)  # looked up per call: LoRA wraps the head to train it

    @property
    def head(self) -> nn.Module:
        return getattr(unwrap(self.model), self.head_name)


class ValueHeadReward(ScoreHeadModel):
    """EX-RM: a linear head on the last layer's hidden state at the last real token, or the mean
    of the head over the response tokens."""

    def __init__(self, seq_cls_model: nn.Module, mean_over_response: bool = False):
        super().__init__(seq_cls_model)
        self.mean_over_response = mean_over_response

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        seq_end: torch.Tensor,
        target_pos: torch.Tensor | None = None,
        target_row: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_lengths: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        hidden = _hidden_states(self.model, input_ids, attention_mask, position_ids, segment_lengths)
        if self.mean_over_response:
            values = self.head(hidden[target_pos]).squeeze(-1)
            total = torch.zeros(seq_end.shape[0], device=values.device, dtype=values.dtype).index_add(
                0, target_row, values
            )
            count = torch.zeros_like(total).index_add(0, target_row, torch.ones_like(values))
            return total / count.clamp(min=1)
        return self.head(hidden[seq_end]).squeeze(-1)


# --- ICRM (objectives/icrm.py) -----------------------------------------------------------------

VALUE_HEAD_DROPOUT = 0.1  # TRL ValueHead default, active in training


class _GradScale(torch.autograd.Function):
    """Identity forward; the backward gradient is multiplied by `scale` (the reference's GradScale)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class TokenValueRM(ScoreHeadModel):
    """A sequence-classification model whose `score` head is applied at every position, plus an
    optional SFT head (a copy of the LM head) that sees the backbone through a gradient scale.

    forward(...) gives the reward of each row (value at its last real token); with
    `per_token=True` it gives `(values [2B, L], sft_logp [B] or None)`, where sft_logp is the SFT
    head's mean log-probability per response token of each chosen row.
    """

    def __init__(self, seq_cls_model: nn.Module, sft_head: nn.Linear | None = None, sft_grad_scale: float = 1e-3):
        super().__init__(seq_cls_model)
        self.dropout = nn.Dropout(VALUE_HEAD_DROPOUT)
        self.sft_head = sft_head
        self.sft_grad_scale = sft_grad_scale

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        per_token: bool = False,
        **_: torch.Tensor,
    ) -> Any:
        """One row per sequence only (the PairCollator layout): icrm does not take share_prompt."""
        hidden = decoder(self.model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = self.head(self.dropout(hidden)).squeeze(-1).float()
        if not per_token:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            return values[rows, last_token_index(attention_mask)]
        sft_logp = None
        if self.sft_head is not None:
            half = input_ids.shape[0] // 2
            mask = response_mask[:half, 1:].bool()  # token t is scored by the hidden state at t-1
            h = _GradScale.apply(hidden[:half, :-1][mask], self.sft_grad_scale)
            per_tok = token_logprobs(self.sft_head, h, input_ids[:half, 1:][mask])
            rows = torch.arange(half, device=input_ids.device)[:, None].expand_as(mask)[mask]
            sums = torch.zeros(half, device=per_tok.device, dtype=per_tok.dtype).index_add(0, rows, per_tok)
            sft_logp = sums / mask.sum(1).clamp(min=1)
        return values, sft_logp


@torch.no_grad()
def generator_token_probs(
    lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """[2B, L]: p(token at t | tokens < t) under `lm` for the response tokens (0 elsewhere), from
    softmax(logits / temperature), restricted to the top-p nucleus and renormalized when top_p < 1
    (0 for a token outside it). The LM head runs only at response positions, in chunks."""
    mask = response_mask[:, 1:].bool()
    labels = input_ids[:, 1:][mask]
    if any(getattr(lm.config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING):
        logits_at = lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][mask]
        head, hidden = (lambda h: h), logits_at
    else:
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1][mask]
        head = lm.get_output_embeddings()
    parts = []
    for start in range(0, hidden.shape[0], LOGPROB_CHUNK):
        probs = F.softmax(head(hidden[start : start + LOGPROB_CHUNK]).float() / temperature, dim=-1)
        y = labels[start : start + LOGPROB_CHUNK]
        p = probs.gather(-1, y[:, None]).squeeze(-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the smallest prefix reaching top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            p = torch.where(keep.gather(-1, y[:, None]).squeeze(-1), p / (probs * keep).sum(-1), torch.zeros_like(p))
        parts.append(p)
    out = torch.zeros(input_ids.shape, device=hidden.device, dtype=torch.float)
    out[:, 1:][mask] = torch.cat(parts) if parts else hidden.new_zeros(0)
    return out
