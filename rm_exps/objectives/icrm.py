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

from rm_exps.batching import GEN_PROBS, EncodedPairs, attach_in_chunks, model_inputs, split_pair
from rm_exps.distributed import copy_parameters_gathered, frozen_zero3_engine, zero3_enabled
from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register

torch = LazyModule("torch")
nn = LazyModule("torch.nn")
transformers = LazyModule("transformers")
metrics = LazyModule("rm_exps.eval.metrics")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")  # TokenValueRM and the generator's token probabilities

EPS = 1e-6  # inside the logs and the normalizers, as the reference
SCALE_MOMENTUM = 0.95  # running normalizer s <- 0.95 s + 0.05 q, updated every training micro-batch
SCALE_INIT = 0.5
GENERATOR_WEIGHT_SCALE = 2.0  # the reference's `2 * get_scores(...)`; it only shifts the running normalizer


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

    @classmethod
    def config_errors(cls, config):
        errors = super().config_errors(config)
        if config.icrm.reg_ratio > 0 and not config.icrm.generator:
            errors.append(
                "objective icrm with reg_ratio > 0 needs `generator` (a causal LM with the model's tokenizer, "
                "e.g. 'run:<sft run>'); reg_ratio 0 is the GRM baseline"
            )
        chunked = config.micro_batch_size is not None and config.micro_batch_size < config.batch_size
        if config.icrm.reg_ratio > 0 and chunked:
            errors.append(
                "icrm with reg_ratio > 0 cannot split batches (micro_batch_size < batch_size): its consistency "
                "term is normalized over the whole batch and its running normalizer moves once per batch"
            )
        return errors

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.generator: nn.Module | None = None
        self.scale = SCALE_INIT

    def build_model(self) -> nn.Module:
        kwargs = self.load_kwargs()
        seq_cls = models.load_model(
            self.config.model, transformers.AutoModelForSequenceClassification, self.tokenizer, num_labels=1, **kwargs
        )
        sft_head = None
        if self.config.icrm.sft_weight > 0:  # a copy of the LM head (a sequence-classification load drops it)
            lm_head = models.load_model(
                self.config.model, transformers.AutoModelForCausalLM, self.tokenizer, **kwargs
            ).get_output_embeddings()
            sft_head = nn.Linear(lm_head.in_features, lm_head.out_features, bias=False, dtype=self.dtype)
            copy_parameters_gathered(sft_head, lm_head)  # under ZeRO-3 the loaded head is a partitioned placeholder
        return modules.TokenValueRM(seq_cls, sft_head, self.config.icrm.sft_grad_scale)

    def setup(self, device: torch.device) -> None:
        if self.config.icrm.reg_ratio == 0:
            return
        if not self.config.icrm.generator:
            raise ValueError("icrm with reg_ratio > 0 needs a `generator` (a causal LM sharing the model's tokenizer)")
        gen_tokenizer = models.load_tokenizer(self.config.icrm.generator, cache_dir=self.config.model_cache_dir)
        if gen_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                f"generator {self.config.icrm.generator!r} has another vocabulary than model "
                f"{self.config.model!r}; the consistency weights need the same tokenizer"
            )
        kwargs = {**self.load_kwargs(), "dtype": self.config.resolved_precision.frozen_dtype}
        self.generator = (
            models.load_model(self.config.icrm.generator, transformers.AutoModelForCausalLM, self.tokenizer, **kwargs)
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
        return modules.generator_token_probs(
            self.generator,
            *(batch[k].to(device) for k in ("input_ids", "attention_mask", "response_mask")),
            temperature=self.config.icrm.generator_temperature,
            top_p=self.config.icrm.generator_top_p,
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
        r_c, r_r = split_pair(values[rows, modules.last_token_index(batch["attention_mask"])])
        bt = metrics.bradley_terry_loss(r_c, r_r)
        loss = (1 - cfg.icrm.reg_ratio) * bt
        extra = {"bt loss": bt.detach()}
        if sft_logp is not None:
            sft = -sft_logp.mean()
            loss = loss + cfg.icrm.sft_weight * sft
            extra["sft loss"] = sft.detach()
        if cfg.icrm.reg_ratio > 0:
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
            loss = loss + cfg.icrm.reg_ratio * icr
            extra.update({"consistency loss": icr.detach(), "consistency scale": torch.tensor(self.scale)})
        return loss, {**self.train_metrics(loss, r_c, r_r), **extra}
