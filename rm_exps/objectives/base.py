"""The objective interface the trainer and evaluators use, and the objective registry.

An objective knows which model(s) it needs and how a pair batch becomes a loss (training) and a
reward per response (evaluation). It never opens files and never steps an optimizer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from rm_exps.batching import InputFormat, PairCollator, SharedPromptCollator, model_inputs, split_pair
from rm_exps.config import RunConfig
from rm_exps.eval.metrics import bradley_terry_loss, pairwise_accuracy, pairwise_metrics
from rm_exps.objectives.attention import SHARED_PROMPT_SDPA

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(config: RunConfig, tokenizer: Any) -> Objective:
    return OBJECTIVES[config.objective](config, tokenizer)


class Objective:
    """Base class: a Bradley-Terry reward model whose `scores` gives one reward per row."""

    name: ClassVar[str]
    input_format: ClassVar[InputFormat] = "chat"
    precompute_train_only: ClassVar[bool] = False  # `precompute` serves training only (not evaluation)
    ranks_pairs: ClassVar[bool] = True  # its rewards rank chosen vs rejected (per-subset accuracy applies)
    # its rewards only mean something inside their pair (a verdict on that pair, e.g. gram_judge): rewards from
    # different pairs are not comparable, so list-wise uses go through `preference_probability` of each pair
    pairwise_only: ClassVar[bool] = False
    trains_policy: ClassVar[bool] = False  # its trainable model is a policy that generates (policy evaluators apply)

    def __init__(self, config: RunConfig, tokenizer: Any):
        self.config = config
        self.tokenizer = tokenizer

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the trainable weights (fp32 under mixed precision: see rm_exps.precision)."""
        return self.config.resolved_precision.weights_dtype

    def load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "cache_dir": self.config.model_cache_dir}
        if self.config.model_parallel_without_accelerate:
            kwargs["device_map"] = "auto"
        if self.config.share_prompt:
            kwargs["attn_implementation"] = SHARED_PROMPT_SDPA
        return kwargs

    # -- to implement ---------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The trainable module (its `forward(**batch)` gives one value per row)."""
        raise NotImplementedError

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One reward per row of the pair batch, [2B]."""
        return model(**model_inputs(batch))

    # -- shared behaviour -----------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        """Place frozen helper models (e.g. a reference model) once the device is known."""

    def precompute(self, datasets: list[Any], collate: Any, batch_size: int, device: torch.device) -> None:
        """Attach to the encoded examples anything frozen that every epoch would recompute."""

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What `loss` averages over in this micro-batch when that is not its pairs (None: pairs, the
        trainer's default). The trainer then weighs micro-batches by it, so an accumulated step is the
        mean over the whole window, e.g. the token mean of every target token in it."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Training state of the objective itself that a mid-run checkpoint must keep (e.g. ICRM's running normalizer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave."""

    def frozen_reference(self) -> nn.Module | None:
        """The frozen model whose per-example log-probs `precompute` attaches (cacheable on disk), if any."""
        return None

    def train_collator(self, pad_token_id: int) -> Any:
        """Builds training batches: one row per sequence, or with `share_prompt` one row per pair."""
        return (SharedPromptCollator if self.config.share_prompt else PairCollator)(pad_token_id)

    def rewards(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return split_pair(self.scores(model, batch))

    def pair_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-pair evaluation values, [B] each: `chosen` and `rejected` rewards, plus any extra the
        objective's `eval_metrics` takes as keyword arguments."""
        r_c, r_r = self.rewards(model, batch)
        return {"chosen": r_c, "rejected": r_r}

    def preference_probability(self, r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        """P(a beats b) from the two rewards: Bradley-Terry, sigmoid(r_a - r_b)."""
        return torch.sigmoid(r_a - r_b)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Bradley-Terry loss -mean log sigmoid(r_c - r_r) and the reference's train metrics."""
        r_c, r_r = self.rewards(model, batch)
        loss = bradley_terry_loss(r_c, r_r)
        return loss, self.train_metrics(loss, r_c, r_r)

    def train_metrics(self, loss: torch.Tensor, r_c: torch.Tensor, r_r: torch.Tensor) -> dict[str, torch.Tensor]:
        r_c, r_r = r_c.detach().float(), r_r.detach().float()
        return {
            "loss": loss.detach().float(),
            "chosen rewards": r_c.mean(),
            "rejected rewards": r_r.mean(),
            "reward margin": (r_c - r_r).mean(),
            "accuracy": pairwise_accuracy(r_c, r_r),
        }

    def eval_metrics(
        self, prefix: str, r_c: torch.Tensor, r_r: torch.Tensor, **extras: torch.Tensor
    ) -> dict[str, float]:
        return pairwise_metrics(prefix, r_c, r_r)

    def hf_model(self, model: nn.Module) -> nn.Module:
        """The transformers model inside the trainable module (what `save_model` writes)."""
        return model.model
