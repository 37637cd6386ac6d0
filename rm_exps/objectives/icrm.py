"""ICRM: intra-trajectory consistency regularized reward model (Zhou et al., arXiv 2506.09096).

A value head reads the last hidden state at every token, so every response prefix has a reward;
the response's reward is the value at its last real token. Besides the Bradley-Terry loss on those
rewards, the rewards of adjacent prefixes are tied together, more strongly where a frozen
generator finds the next token likely (a likely continuation should not change the expected
outcome much). The GRM-style SFT regularizer (a separate LM head on the chosen responses) is kept,
as in the reference. `reg_ratio: 0` is the paper's GRM baseline. Choices where the reference code
is missing or padding-dependent are listed in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rm_exps.batching import GEN_PROBS, EncodedPairs, attach_in_chunks, model_inputs, split_pair
from rm_exps.distributed import copy_parameters_gathered, frozen_zero3_engine, zero3_enabled
from rm_exps.eval.metrics import bradley_terry_loss
from rm_exps.models import load_model, load_tokenizer
from rm_exps.objectives.base import Objective, register
from rm_exps.objectives.modules import (
    _LOGIT_POSTPROCESSING,
    LOGPROB_CHUNK,
    decoder,
    last_token_index,
    score_head_name,
    token_logprobs,
    unwrap,
)

EPS = 1e-6  # inside the logs and the normalizers, as the reference
SCALE_MOMENTUM = 0.95  # running normalizer s <- 0.95 s + 0.05 q, updated every training micro-batch
SCALE_INIT = 0.5
GENERATOR_WEIGHT_SCALE = 2.0  # the reference's `2 * get_scores(...)`; it only shifts the running normalizer
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


class TokenValueRM(nn.Module):
    """A sequence-classification model whose `score` head is applied at every position, plus an
    optional SFT head (a copy of the LM head) that sees the backbone through a gradient scale.

    forward(...) gives the reward of each row (value at its last real token); with
    `per_token=True` it gives `(values [2B, L], sft_logp [B] or None)`, where sft_logp is the SFT
    head's mean log-probability per response token of each chosen row.
    """

    def __init__(self, seq_cls_model: nn.Module, sft_head: nn.Linear | None = None, sft_grad_scale: float = 1e-3):
        super().__init__()
        self.model = seq_cls_model
        self.head_name = score_head_name(seq_cls_model)  # looked up per call: LoRA wraps the head to train it
        self.dropout = nn.Dropout(VALUE_HEAD_DROPOUT)
        self.sft_head = sft_head
        self.sft_grad_scale = sft_grad_scale

    @property
    def head(self) -> nn.Module:
        return getattr(unwrap(self.model), self.head_name)

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


def consistency_terms(
    values: torch.Tensor, response_mask: torch.Tensor, token_probs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unnormalized consistency loss and the batch quantity q of the running normalizer.

    values [2B, L]: per-prefix rewards (chosen rows, then rejected rows); response_mask [2B, L];
    token_probs [2B, L]: the generator's probability of the token at t given the tokens before it.
    With baselines over the *other* response's real response tokens (stop-gradient)

        m_r = mean_t r_r[t],   m_c = mean_t r_c[t]
        d[t] = sigmoid(r_c[t] - m_r) on chosen rows,  sigmoid(m_c - r_r[t]) on rejected rows
        l[t] = -1/2 [ log(d[t] + eps) sg(d[t+1]) + sg(d[t]) log(d[t+1] + eps) ]
        w[t] = 2 p_gen(y_{t+1} | x, y_<=t),   M[t] = 1 iff tokens t and t+1 are both response tokens

    returns  sum(l w M) / (sum M + eps)  and  q = sg( sum((d[t] + d[t+1]) / 2 w M) / (sum M + eps) ).
    """
    mask = response_mask.to(values.dtype)
    (v_c, v_r), (m_c, m_r) = split_pair(values), split_pair(mask)
    base_c = (v_c.detach() * m_c).sum(1) / m_c.sum(1).clamp(min=1)
    base_r = (v_r.detach() * m_r).sum(1) / m_r.sum(1).clamp(min=1)
    d = torch.cat([torch.sigmoid(v_c - base_r[:, None]), torch.sigmoid(base_c[:, None] - v_r)])
    pairs = mask[:, :-1] * mask[:, 1:]
    w = GENERATOR_WEIGHT_SCALE * token_probs[:, 1:].to(values.dtype)
    now, nxt = d[:, :-1], d[:, 1:]
    per_pair = -0.5 * (torch.log(now + EPS) * nxt.detach() + now.detach() * torch.log(nxt + EPS))
    denom = pairs.sum() + EPS
    q = (((now + nxt) / 2) * w * pairs).sum().detach() / denom
    return (per_pair * w * pairs).sum() / denom, q


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


@register
class ICRM(Objective):
    """Per-token rewards r[t] from a value head; R = r at the last real token.

        loss = (1 - reg_ratio) * L_BT + reg_ratio * L_ICR + sft_weight * L_SFT
        L_BT  = -mean log sigmoid(R_c - R_r)
        L_ICR = consistency_terms(...)[0] / (s + eps), with s <- 0.95 s + 0.05 q each training batch (s_0 = 0.5)
        L_SFT = -mean over chosen rows of the SFT head's mean log-probability per response token;
                the backbone receives sft_grad_scale times its gradient.

    The generator's token probabilities are computed once per example (`precompute`); the
    generator is then released. `reg_ratio: 0` (GRM) loads no generator. Evaluation uses R only.
    """

    name = "icrm"
    precompute_train_only = True  # evaluation reads R only; the generator weights matter for training

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.generator: nn.Module | None = None
        self.scale = SCALE_INIT

    def build_model(self) -> nn.Module:
        kwargs = self.load_kwargs()
        seq_cls = load_model(
            self.config.model, AutoModelForSequenceClassification, self.tokenizer, num_labels=1, **kwargs
        )
        sft_head = None
        if self.config.sft_weight > 0:  # a copy of the LM head (a sequence-classification load drops it)
            lm_head = load_model(
                self.config.model, AutoModelForCausalLM, self.tokenizer, **kwargs
            ).get_output_embeddings()
            sft_head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=False, dtype=self.dtype)
            copy_parameters_gathered(sft_head, lm_head)  # under ZeRO-3 the loaded head is a partitioned placeholder
        return TokenValueRM(seq_cls, sft_head, self.config.sft_grad_scale)

    def setup(self, device: torch.device) -> None:
        if self.config.reg_ratio == 0:
            return
        if not self.config.generator:
            raise ValueError("icrm with reg_ratio > 0 needs a `generator` (a causal LM sharing the model's tokenizer)")
        gen_tokenizer = load_tokenizer(self.config.generator, cache_dir=self.config.model_cache_dir)
        if gen_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                f"generator {self.config.generator!r} has another vocabulary than model "
                f"{self.config.model!r}; the consistency weights need the same tokenizer"
            )
        kwargs = {**self.load_kwargs(), "dtype": self.config.resolved_precision.frozen_dtype}
        self.generator = (
            load_model(self.config.generator, AutoModelForCausalLM, self.tokenizer, **kwargs)
            .eval()
            .requires_grad_(False)
        )
        if zero3_enabled():  # partitioned: it runs inside an inference engine of its own (hooks gather each layer)
            self.generator = frozen_zero3_engine(self.generator, self.config.effective_eval_batch_size).module
        elif not self.config.model_parallel_without_accelerate:
            self.generator.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}  # the running normalizer s, per process

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = state["scale"]

    def _token_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        return generator_token_probs(
            self.generator,
            *(batch[k].to(device) for k in ("input_ids", "attention_mask", "response_mask")),
            temperature=self.config.generator_temperature,
            top_p=self.config.generator_top_p,
        )

    def precompute(self, datasets: Iterable[EncodedPairs], collate: Any, batch_size: int, device: torch.device) -> None:
        """Attach the generator's per-token probabilities to every example, then drop the generator."""
        if self.generator is None:
            return

        def token_probs(chunk: list[dict[str, Any]]) -> list[tuple[list[float], list[float]]]:
            probs = self._token_probs(model_inputs(collate(chunk))).cpu()
            return [
                tuple(
                    probs[side * len(chunk) + i, len(ex["prompt_ids"]) : len(ex["prompt_ids"]) + len(ex[key])].tolist()
                    for side, key in ((0, "chosen_ids"), (1, "rejected_ids"))
                )
                for i, ex in enumerate(chunk)
            ]

        attach_in_chunks(datasets, GEN_PROBS, batch_size, token_probs)
        self.generator = None

    def loss(self, model, batch):
        cfg = self.config
        values, sft_logp = model(**model_inputs(batch), per_token=True)
        rows = torch.arange(values.shape[0], device=values.device)
        r_c, r_r = split_pair(values[rows, last_token_index(batch["attention_mask"])])
        bt = bradley_terry_loss(r_c, r_r)
        loss = (1 - cfg.reg_ratio) * bt
        extra = {"bt loss": bt.detach()}
        if sft_logp is not None:
            sft = -sft_logp.mean()
            loss = loss + cfg.sft_weight * sft
            extra["sft loss"] = sft.detach()
        if cfg.reg_ratio > 0:
            if GEN_PROBS in batch:
                probs = batch[GEN_PROBS].to(values.device)
            elif self.generator is not None:
                probs = self._token_probs(batch).to(values.device)
            else:
                raise RuntimeError(
                    "icrm: this batch has no precomputed generator probabilities and the generator was released"
                )
            raw, q = consistency_terms(values, batch["response_mask"], probs)
            self.scale = SCALE_MOMENTUM * self.scale + (1 - SCALE_MOMENTUM) * q.item()
            icr = raw / (self.scale + EPS)
            loss = loss + cfg.reg_ratio * icr
            extra.update({"consistency loss": icr.detach(), "consistency scale": torch.tensor(self.scale)})
        return loss, {**self.train_metrics(loss, r_c, r_r), **extra}
