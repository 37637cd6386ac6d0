"""The objective interface the trainer and evaluators use, and the objective registry.

An objective knows which model(s) it needs and how a pair batch becomes a loss (training) and a
reward per response (evaluation). It never opens files and never steps an optimizer. What it is
(its capabilities: class attributes) and which field values it refuses (`config_errors`) are
asked by the plan, the run and the evaluators, so a new objective is one new module: nothing
outside it names an objective.

Importing an objective module imports no torch: plan validation and `run_plan.py --dry-run` ask the
registry about capabilities and config checks and compute nothing. torch, transformers and the
nn.Modules (modules.py) are named through `LazyModule` (rm_exps/lazy.py) and imported when a run
first computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rm_exps.batching import PairCollator, SharedPromptCollator, model_inputs, pair_format, split_pair
from rm_exps.lazy import LazyModule

if TYPE_CHECKING:
    from torch import nn

    from rm_exps.config import RunConfig

torch = LazyModule("torch")
metrics = LazyModule("rm_exps.eval.metrics")
attention = LazyModule("rm_exps.objectives.attention")

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(config: RunConfig, tokenizer: Any) -> Objective:
    return OBJECTIVES[config.objective](config, tokenizer)


def names_with(capability: str) -> list[str]:
    """The registered objectives that have `capability` (a boolean class attribute), sorted."""
    return sorted(name for name, cls in OBJECTIVES.items() if getattr(cls, capability))


class Objective:
    """Base class: a Bradley-Terry reward model whose `scores` gives one reward per row."""

    name: ClassVar[str]
    # -- capabilities: what the objective is ---------------------------------------------------
    # how a pair is encoded: the name of a registered batching.PairFormat
    input_format: ClassVar[str] = "chat"
    # it takes the shared-prompt layout (`share_prompt`: prompt + chosen + rejected in one row)
    supports_share_prompt: ClassVar[bool] = False
    # its trained model is a causal-LM policy that generates: the Hamiltonian generation check and
    # policy evaluation (`policy_eval_num_prompts`) apply
    trains_policy: ClassVar[bool] = False
    # it is defined against a frozen reference model: `no_ref_model` is refused
    requires_reference_model: ClassVar[bool] = False
    # its rewards rank chosen vs rejected (accuracy and per-subset accuracy apply)
    ranks_pairs: ClassVar[bool] = True
    # its rewards only mean something inside their pair (a verdict on that pair): rewards from different
    # pairs are not comparable, so list-wise uses go through `preference_probability` of each pair
    pairwise_only: ClassVar[bool] = False
    # `precompute` serves training only (not evaluation)
    precompute_train_only: ClassVar[bool] = False

    def __init__(self, config: RunConfig, tokenizer: Any):
        self.config = config
        self.tokenizer = tokenizer

    @classmethod
    def config_errors(cls, config: RunConfig) -> list[str]:
        """Problems of a run's (validated) field values for this objective, checked at plan time with the
        other rules of the run (rm_exps.config.config_rule_errors). A subclass extends the list
        (`super().config_errors(config) + [...]`)."""
        errors = []
        bon = config.best_of_n
        if config.share_prompt and not cls.supports_share_prompt:
            errors.append(
                f"share_prompt works with {', '.join(names_with('supports_share_prompt'))} (chosen and rejected "
                f"continue one prompt); objective '{cls.name}' has no shared prompt"
            )
        fmt = pair_format(cls.input_format)
        if config.max_prompt_length is not None and not fmt.separate_prompt:
            errors.append(
                f"max_prompt_length: objective '{cls.name}' has no separate prompt (its rows template the "
                f"question with the answers, format '{fmt.name}'); max_length bounds its whole row, and over_length "
                "'truncate' cuts its answers"
            )
        if cls.requires_reference_model and config.no_ref_model:
            errors.append(f"objective {cls.name} needs its reference model: no_ref_model must be false")
        if bon.policy_eval_num_prompts != 0 and not cls.trains_policy:
            *others, last = names_with("trains_policy")
            errors.append(
                f"policy_eval_num_prompts evaluates a policy; objective {cls.name!r} does not train one "
                f"(use {', '.join(others)} or {last})"
            )
        if bon.policy is not None and cls.pairwise_only and bon.selection == "scores":
            errors.append(
                f"{cls.name} compares two answers and gives no per-sample score: set bon_selection to "
                "'knockout' or 'linear_scan' for best-of-N"
            )
        if not cls.ranks_pairs and not config.is_train_metric and "accuracy" in config.score_metric_name:
            errors.append(
                f"score_metric_name '{config.score_metric_name}': {cls.name} does not rank answers and reports "
                "no accuracy; use 'eval test loss' with score_largest false"
            )
        return errors

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the trainable weights (fp32 under mixed precision: see rm_exps.precision)."""
        return self.config.resolved_precision.weights_dtype

    def load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "cache_dir": self.config.model_cache_dir}
        if self.config.model_parallel_without_accelerate:
            kwargs["device_map"] = "auto"
        if self.config.shares_prompt:
            kwargs["attn_implementation"] = attention.SHARED_PROMPT_SDPA  # importing it registers the attention
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
        """Training state of the objective itself that a mid-run checkpoint must keep (e.g. ICRM's running
        normalizer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave."""

    def frozen_reference(self) -> nn.Module | None:
        """The frozen model whose per-example log-probs `precompute` attaches (cacheable on disk), if any."""
        return None

    def train_collator(self, pad_token_id: int) -> Any:
        """Builds training batches: one row per sequence, or with `share_prompt` one row per pair."""
        return (SharedPromptCollator if self.config.shares_prompt else PairCollator)(pad_token_id)

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
        loss = metrics.bradley_terry_loss(r_c, r_r)
        return loss, self.train_metrics(loss, r_c, r_r)

    def train_metrics(self, loss: torch.Tensor, r_c: torch.Tensor, r_r: torch.Tensor) -> dict[str, torch.Tensor]:
        r_c, r_r = r_c.detach().float(), r_r.detach().float()
        return {
            "loss": loss.detach().float(),
            "chosen rewards": r_c.mean(),
            "rejected rewards": r_r.mean(),
            "reward margin": (r_c - r_r).mean(),
            "accuracy": metrics.pairwise_accuracy(r_c, r_r),
        }

    def eval_metrics(
        self, prefix: str, r_c: torch.Tensor, r_r: torch.Tensor, **extras: torch.Tensor
    ) -> dict[str, float]:
        return metrics.pairwise_metrics(prefix, r_c, r_r)

    def hf_model(self, model: nn.Module) -> nn.Module:
        """The transformers model inside the trainable module (what `save_model` writes)."""
        return model.model
