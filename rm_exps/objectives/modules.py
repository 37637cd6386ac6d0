"""nn.Modules that turn a pair batch into one number per row.

Each wraps a transformers model and does the whole reward computation in `forward`, so that
DDP/DeepSpeed hooks see a single forward call. They apply the LM head only where it is needed
(response positions, or the last position), never at every prompt position.
"""

from __future__ import annotations

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


class ValueHeadReward(nn.Module):
    """EX-RM: a linear head on the last layer's hidden state at the last real token, or the mean
    of the head over the response tokens."""

    def __init__(self, seq_cls_model: nn.Module, mean_over_response: bool = False):
        super().__init__()
        self.model = seq_cls_model
        self.head_name = score_head_name(seq_cls_model)  # looked up per call: LoRA wraps the head to train it
        self.mean_over_response = mean_over_response

    @property
    def head(self) -> nn.Module:
        return getattr(unwrap(self.model), self.head_name)

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
