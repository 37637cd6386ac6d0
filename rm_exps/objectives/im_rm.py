"""IM-RM: the implicit reward model of DPO, a log-likelihood ratio against a frozen reference."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rm_exps.batching import REF_LOGPS, EncodedPairs, attach_in_chunks, model_inputs, split_pair
from rm_exps.distributed import copy_parameters_gathered, frozen_zero3_engine, zero3_enabled
from rm_exps.lazy import LazyModule
from rm_exps.objectives.base import Objective, register

if TYPE_CHECKING:
    from torch import nn

torch = LazyModule("torch")
transformers = LazyModule("transformers")
models = LazyModule("rm_exps.models")
modules = LazyModule("rm_exps.objectives.modules")


@register
class ImplicitRM(Objective):
    """r(x, y) = kl_coeff * (log pi(y|x) - log pi_ref(y|x)), log-probabilities summed over the response
    tokens (end-of-turn included); with `no_ref_model`, r = kl_coeff * log pi(y|x). pi_ref is the
    initial model, frozen. Loss: -log sigmoid(r_c - r_r).

    pi_ref never changes, so its log-probabilities are computed once per example
    (`precompute`) and the reference model is then released; batches carry them as
    `ref_logps`. Without precomputation the reference runs on every batch.
    """

    name = "im_rm"
    supports_share_prompt = True
    trains_policy = True

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.reference: nn.Module | None = None

    def build_model(self) -> nn.Module:
        policy = self._policy()
        if self.config.no_ref_model:
            return policy
        # An exact copy: rows that a vocabulary resize initialized at random must match too.
        if zero3_enabled():  # partitioned parameters: a second load, then the policy's values copied in
            self.reference = self._policy()
            copy_parameters_gathered(self.reference, policy)
        else:
            self.reference = copy.deepcopy(policy)
        self.reference.eval().requires_grad_(False)
        return policy

    def _policy(self) -> nn.Module:
        causal_lm = models.load_model(
            self.config.model, transformers.AutoModelForCausalLM, self.tokenizer, **self.load_kwargs()
        )
        return modules.SequenceLogProb(causal_lm)

    def setup(self, device: torch.device) -> None:
        if self.reference is None or self.config.model_parallel_without_accelerate:
            return
        if zero3_enabled():
            self.reference = frozen_zero3_engine(self.reference, self.config.effective_eval_batch_size)
        else:
            self.reference.to(device)

    def frozen_reference(self) -> nn.Module | None:
        return self.reference

    def precompute(self, datasets: Iterable[EncodedPairs], collate: Any, batch_size: int, device: torch.device) -> None:
        """Attach (chosen, rejected) reference log-probs to every example, then drop the reference."""
        if self.reference is None:
            return

        def logps(chunk: list[dict[str, Any]]) -> list[tuple[float, float]]:
            batch = {k: v.to(device) for k, v in model_inputs(collate(chunk)).items()}
            chosen, rejected = split_pair(self.reference(**batch).double().cpu())
            return list(zip(chosen.tolist(), rejected.tolist()))

        with torch.inference_mode():
            attach_in_chunks(datasets, REF_LOGPS, batch_size, logps)
        self.reference = None

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logp = model(**model_inputs(batch))
        if REF_LOGPS in batch:
            logp = logp - batch[REF_LOGPS].to(logp)
        elif not self.config.no_ref_model:
            if self.reference is None:
                raise RuntimeError("the IM-RM reference was released, but this batch has no precomputed ref_logps")
            with torch.no_grad():
                ref_logp = self.reference(**model_inputs(batch)).to(logp.device)
            logp = logp - ref_logp
        return self.config.kl_coeff * logp
