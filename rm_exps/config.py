"""The run config: every field a run reads, with its type, default and a one-line doc.

Families of fields are typed sections (`config.lora.r`, `config.best_of_n.policy`, ...). A plan may
give a sectioned field by the reference harness's flat name (`lora_r: 8`, as every reference plan
does) or nested (`"lora": {"r": 8}`): `FLAT_NAMES` is the one table between the two. `flat()` is the
reference's flat view {flat name: value}: what the config hash covers, what config.json records and
what reports show, so runs recorded before the sections compare field by field. A plan may omit any
field; the reference's misspellings (`evalution_datasets_splits`, `wandb_resume_path`) are accepted.

Rules that relate fields to each other live in `config_rule_errors` (with the objective's own
`config_errors`); checks of files, datasets and model names are the plan's (rm_exps.plan).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rm_exps.agentic.config import AgenticEvalConfig
from rm_exps.batching import pair_format
from rm_exps.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, names_with
from rm_exps.precision import Precision, resolve_precision
from rm_exps.suggest import did_you_mean

# A dataset is a path (save_to_disk folder, .json/.jsonl file) or a recipe {"name": ..., **options}
# that is prepared once and cached under `data_files_dir`.
DatasetSource = str | dict[str, Any]

# Field aliases accepted for compatibility with the reference plans: alias -> flat name.
ALIASES = {"evalution_datasets_splits": "evaluation_datasets_splits", "wandb_resume_path": "wandb_resume_id"}

# Fields that change how a run is observed, not what it computes (flat names): left out of the config
# hash, so toggling them does not invalidate a finished run.
PRESENTATION_FIELDS = frozenset(
    {
        "disable_console_log",
        "save_logs",
        "train_batch_log_interval",
        "epoch_log_interval",
        "save_metric_plots",
        "save_every_num_val",
        "use_tensorboard",
        "use_wandb",
        "wandb_project_name",
        "wandb_entity_name",
        "wandb_track_model",
        "wandb_exclude_files",
        "wandb_resume_id",
        "gpu_ids",
        "outputs_dir",
        "model_cache_dir",
        "data_files_dir",
        "save_model",
        "cache_reference_logps",
        "checkpoint_every_steps",
        "checkpoint_keep",
    }
)

PERSONA_DEFAULTS = {
    "output_tokens_matching_yes": ["yes", "sure"],
    "output_tokens_matching_no": ["no", "never"],
    "prefixes_matching_yes": ["In my view, the answer is ", "A truthful reply is "],
    "prefixes_matching_no": ["My judgement: ", "Considering the statement, I say "],
    "eval_output_tokens_matching_yes": ["certainly", "absolutely"],
    "eval_output_tokens_matching_no": ["not really", "nope"],
    "eval_prefixes_matching_yes": ["My response would be "],
    "eval_prefixes_matching_no": ["I lean toward "],
}


# Objectives named in field docs, read from the registry so the docs stay true as objectives are added.
_SHARE_PROMPT = ", ".join(names_with("supports_share_prompt"))
_TRAIN_POLICIES = ", ".join(names_with("trains_policy"))
_SEPARATE_PROMPT = ", ".join(
    sorted(name for name, cls in OBJECTIVES.items() if pair_format(cls.input_format).separate_prompt)
)


def _doc(default: Any, doc: str, **kw: Any) -> Any:
    return Field(default, description=doc, **kw)


def _section(cls: type[BaseModel], doc: str) -> Any:
    return Field(default_factory=cls, description=doc)


class Section(BaseModel):
    """A family of fields of the run config; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PersonaSection(Section):
    """The Persona controlled experiment (reference PersonaControlledRewardModelExperiment)."""

    answer_matching_behavior: str | None = _doc(
        None, "Persona: keep statements whose matching answer is this (e.g. 'Yes'); set = a Persona run."
    )
    yes_tokens: list[str] = _doc(PERSONA_DEFAULTS["output_tokens_matching_yes"], "Persona: train yes tokens.")
    no_tokens: list[str] = _doc(PERSONA_DEFAULTS["output_tokens_matching_no"], "Persona: train no tokens.")
    yes_prefixes: list[str] = _doc(PERSONA_DEFAULTS["prefixes_matching_yes"], "Persona: train yes prefixes.")
    no_prefixes: list[str] = _doc(PERSONA_DEFAULTS["prefixes_matching_no"], "Persona: train no prefixes.")
    eval_yes_tokens: list[str] = _doc(
        PERSONA_DEFAULTS["eval_output_tokens_matching_yes"], "Persona: unseen yes tokens."
    )
    eval_no_tokens: list[str] = _doc(PERSONA_DEFAULTS["eval_output_tokens_matching_no"], "Persona: unseen no tokens.")
    eval_yes_prefixes: list[str] = _doc(PERSONA_DEFAULTS["eval_prefixes_matching_yes"], "Persona: unseen yes prefixes.")
    eval_no_prefixes: list[str] = _doc(PERSONA_DEFAULTS["eval_prefixes_matching_no"], "Persona: unseen no prefixes.")


class BestOfNSection(Section):
    """Best-of-N sampling scored by the run's reward model, the DPO pairs drawn from it, and the
    evaluation of a trained policy (which shares its decoding settings)."""

    policy: str | None = _doc(
        None,
        "Best-of-N: policy that samples the responses (model name, folder or 'run:<experiment_name>'); set = "
        "best-of-N on.",
    )
    n: list[int] = _doc([1, 2, 4, 8, 16], "Best-of-N: the N values reported; max(bon_n) samples are drawn per prompt.")
    num_prompts: int = _doc(50, "Best-of-N: test prompts (seeded subset); <=0: all.")
    max_new_tokens: int = _doc(128, "Best-of-N and policy evaluation: max new tokens per response.", ge=1)
    temperature: float = _doc(1.0, "Best-of-N: sampling temperature.", gt=0)
    top_p: float = _doc(1.0, "Best-of-N: sampling top-p.", gt=0, le=1)
    batch_size: int = _doc(16, "Best-of-N and policy evaluation: prompts per generate call.", ge=1)
    selection: Literal["scores", "knockout", "linear_scan"] = _doc(
        "scores",
        "Best-of-N: pick the highest-scored sample ('scores'), or let this run's model judge pairs in a knockout "
        "tournament / linear scan (pairwise judges such as gram_judge).",
    )
    reference: str = _doc(
        "first",
        "Best-of-N win rate baseline: 'first' (the first sample, i.e. N=1) or 'run:<experiment_name>' (that run's "
        "selections).",
    )
    judge_model: str | None = _doc(
        None,
        "Judge reward model (sequence-classification folder/hub id or 'run:<experiment_name>') for judge reward and "
        "win rates.",
    )
    dpo_pairs_num_prompts: int = _doc(
        0,
        "Best-of-N: also sample this many train-split prompts the RM was not trained on; save highest- vs "
        "lowest-scored pairs in dpo_pairs/ (0: off; <0: all).",
    )
    dpo_pairs_min_gap: float = _doc(
        0.0, "DPO pairs: keep a prompt only if its highest minus lowest score is at least this.", ge=0
    )
    dpo_pairs_exclude_test_prompts: bool = _doc(True, "DPO pairs: drop train prompts whose text is also a test prompt.")
    policy_eval_num_prompts: int = _doc(
        0,
        f"Objectives that train a policy ({_TRAIN_POLICIES}): greedy responses of the trained and the starting "
        "policy on this many test prompts, judged (0: off; <0: all).",
    )

    @field_validator("n")
    @classmethod
    def _positive_ns(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError(f"bon_n must be a non-empty list of positive integers, got {v}")
        return sorted(set(v))


class IcrmSection(Section):
    """ICRM: intra-trajectory consistency (arXiv 2506.09096)."""

    reg_ratio: float = _doc(
        0.1,
        "ICRM: weight of the consistency term; Bradley-Terry weighs 1 - reg_ratio (0: the GRM baseline).",
        ge=0,
        le=1,
    )
    sft_weight: float = _doc(
        1.0, "ICRM: weight of the SFT regularizer (separate LM head, chosen responses); 0: off.", ge=0
    )
    sft_grad_scale: float = _doc(
        0.001, "ICRM: the SFT head's gradient into the backbone is multiplied by this (reference weight_ratio).", ge=0
    )
    generator: str | None = _doc(
        None,
        "ICRM: frozen causal LM sharing the tokenizer that weights the consistency term; 'run:<experiment_name>' for "
        "a run's saved model.",
    )
    generator_temperature: float = _doc(1.0, "ICRM: temperature of the generator's next-token probabilities.", gt=0)
    generator_top_p: float = _doc(
        1.0, "ICRM: nucleus of the generator's next-token probabilities (renormalized; 0 outside it).", gt=0, le=1
    )


class JudgeSection(Section):
    """GRAM's generative judge (gram_pretrain, gram_judge) and its row formats."""

    order: Literal["random", "both"] = _doc(
        "random",
        "GRAM training (gram_pretrain, gram_judge): each pair in one A/B order chosen by a seeded coin, or in both "
        "orders.",
    )
    label_smoothing: float = _doc(
        0.1, "gram_judge: label smoothing of the cross-entropy over the A/B logits.", ge=0, lt=1
    )
    max_answer_tokens: int = _doc(
        0,
        "GRAM formats: cut each answer to this many tokens before templating (tags and '#Preferred:' kept); <=0: "
        "uncut.",
    )


class LoraSection(Section):
    """LoRA adapters (peft) instead of training every weight."""

    r: int = _doc(0, "LoRA rank (peft); 0 trains every weight. Heads an objective adds stay fully trainable.", ge=0)
    alpha: float | None = _doc(None, "LoRA alpha; null: 2 * lora_r.")
    dropout: float = _doc(0.0, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: str | list[str] = _doc(
        "all-linear",
        "Modules LoRA adapts: 'all-linear' (every linear layer but the output head) or a list of module names.",
    )
    save_merged: bool = _doc(False, "With save_model and LoRA: also save the merged full model in model_merged/.")


class TrackingSection(Section):
    """Where a run's metrics are shown: Weights & Biases, TensorBoard, metric plots (presentation only)."""

    tensorboard: bool = _doc(False, "Write TensorBoard scalars.")
    wandb: bool = _doc(False, "Track the run with Weights & Biases.")
    wandb_project: str = _doc("rm_exps", "W&B project.")
    wandb_entity: str | None = _doc(None, "W&B entity (team or user).")
    wandb_track_model: str | None = _doc(None, "W&B model watching ('gradients', 'parameters', 'all') or none.")
    wandb_exclude_files: list[str] = _doc(["plots/**"], "Globs of run-folder files not uploaded to W&B.")
    wandb_resume_id: str = _doc("", "W&B run id to resume ('' starts a new run).")
    metric_plots: bool = _doc(False, "Draw each metric tag against the epoch into plots/.")
    plot_every_num_val: int = _doc(1, "Redraw plots every this many validations.")


class HamCycleSection(Section):
    """The Hamiltonian-cycle generation check of a trained policy."""

    num_tries: int = _doc(
        1, f"Hamiltonian-cycle generation check ({_TRAIN_POLICIES}): samples per prompt (pass@k).", ge=1
    )
    num_samples: int = _doc(
        200, "Prompts per split (train, test) checked by the generation check; <=0: all, 0 < n: a seeded subset."
    )
    max_new_tokens: int = _doc(300, "Generation check: max new tokens per sample.", ge=1)
    batch_size: int = _doc(
        32,
        "Generation check: prompts per generate call (decoding is step-bound on CPU: bigger batches amortize it).",
        ge=1,
    )
    do_sample: bool = _doc(True, "Generation check: ancestral sampling (temperature 1, no top-k/top-p); false: greedy.")


# The one table between the reference's flat names and the sections: flat name -> (section, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "use_tensorboard": ("tracking", "tensorboard"),
    "use_wandb": ("tracking", "wandb"),
    "wandb_project_name": ("tracking", "wandb_project"),
    "wandb_entity_name": ("tracking", "wandb_entity"),
    "wandb_track_model": ("tracking", "wandb_track_model"),
    "wandb_exclude_files": ("tracking", "wandb_exclude_files"),
    "wandb_resume_id": ("tracking", "wandb_resume_id"),
    "save_metric_plots": ("tracking", "metric_plots"),
    "save_every_num_val": ("tracking", "plot_every_num_val"),
    "ham_cycle_gen_num_tries": ("ham_cycle", "num_tries"),
    "ham_cycle_gen_num_samples": ("ham_cycle", "num_samples"),
    "ham_cycle_gen_max_new_tokens": ("ham_cycle", "max_new_tokens"),
    "ham_cycle_gen_batch_size": ("ham_cycle", "batch_size"),
    "ham_cycle_gen_do_sample": ("ham_cycle", "do_sample"),
    "judge_order": ("judge", "order"),
    "judge_label_smoothing": ("judge", "label_smoothing"),
    "judge_max_answer_tokens": ("judge", "max_answer_tokens"),
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "lora_target_modules": ("lora", "target_modules"),
    "lora_save_merged": ("lora", "save_merged"),
    "reg_ratio": ("icrm", "reg_ratio"),
    "sft_weight": ("icrm", "sft_weight"),
    "sft_grad_scale": ("icrm", "sft_grad_scale"),
    "generator": ("icrm", "generator"),
    "generator_temperature": ("icrm", "generator_temperature"),
    "generator_top_p": ("icrm", "generator_top_p"),
    "bon_policy": ("best_of_n", "policy"),
    "bon_n": ("best_of_n", "n"),
    "bon_num_prompts": ("best_of_n", "num_prompts"),
    "bon_max_new_tokens": ("best_of_n", "max_new_tokens"),
    "bon_temperature": ("best_of_n", "temperature"),
    "bon_top_p": ("best_of_n", "top_p"),
    "bon_batch_size": ("best_of_n", "batch_size"),
    "bon_selection": ("best_of_n", "selection"),
    "bon_reference": ("best_of_n", "reference"),
    "judge_model": ("best_of_n", "judge_model"),
    "dpo_pairs_num_prompts": ("best_of_n", "dpo_pairs_num_prompts"),
    "dpo_pairs_min_gap": ("best_of_n", "dpo_pairs_min_gap"),
    "dpo_pairs_exclude_test_prompts": ("best_of_n", "dpo_pairs_exclude_test_prompts"),
    "policy_eval_num_prompts": ("best_of_n", "policy_eval_num_prompts"),
    "answer_matching_behavior_to_use": ("persona", "answer_matching_behavior"),
    "output_tokens_matching_yes": ("persona", "yes_tokens"),
    "output_tokens_matching_no": ("persona", "no_tokens"),
    "prefixes_matching_yes": ("persona", "yes_prefixes"),
    "prefixes_matching_no": ("persona", "no_prefixes"),
    "eval_output_tokens_matching_yes": ("persona", "eval_yes_tokens"),
    "eval_output_tokens_matching_no": ("persona", "eval_no_tokens"),
    "eval_prefixes_matching_yes": ("persona", "eval_yes_prefixes"),
    "eval_prefixes_matching_no": ("persona", "eval_no_prefixes"),
}
# (section, field) -> flat name
SECTION_FLAT_NAMES: dict[tuple[str, str], str] = {place: flat for flat, place in FLAT_NAMES.items()}


class RunConfig(BaseModel):
    """One run, fully resolved. Unknown fields are errors (the plan loader names the closest one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- identity and bookkeeping -------------------------------------------------------------
    experiment_name: str = _doc("run", "Run name; templated from other fields, e.g. '{model}_{objective}'.")
    random_seed: int = _doc(-1, "Seed for torch/numpy/random; -1 derives one from the run's identity and records it.")
    outputs_dir: str = _doc("outputs", "Parent folder of the run folder.")
    data_files_dir: str = _doc("data_files", "Where dataset recipes are prepared and cached.")
    disable_console_log: bool = _doc(False, "Do not log to the console (the run log file is still written).")
    save_logs: bool = _doc(True, "Write run.log in the run folder.")
    train_batch_log_interval: int = _doc(10, "Log the training metrics every this many micro-batches (0: never).")
    epoch_log_interval: int = _doc(1, "Log epoch metrics every this many epochs.")
    tracking: TrackingSection = _section(TrackingSection, "W&B, TensorBoard and metric plots.")
    gpu_ids: list[int] = _doc([], "GPU ids given to this run by the plan's gpu_ids_pool (set by the runner).")

    # --- score --------------------------------------------------------------------------------
    score_metric_name: str = _doc("eval test accuracy", "Metric reported as the run's score.")
    is_train_metric: bool = _doc(False, "The score metric is a train metric (else a validation metric).")
    score_largest: bool = _doc(True, "Larger score is better.")
    return_best_score: bool = _doc(False, "Score = best value over validations (else the last value).")

    # --- data ---------------------------------------------------------------------------------
    dataset_path: DatasetSource | None = _doc(
        None, "Training data: a prepared folder/file or a recipe {'name': ..., options}."
    )
    num_train_samples: int = _doc(-1, "Train pairs used (subsampled with dataset_prep_random_seed); <=0: all.")
    num_test_samples: int = _doc(
        200, "Test pairs, and the size of the train/evaluation subsets scored each validation; <=0: all."
    )
    dataset_prep_random_seed: int = _doc(517, "Seed of the subsampling (independent of random_seed).")
    eval_train_subset: bool = _doc(
        True, "Also evaluate a seeded subset of the train split, the reference's `eval train` metrics; false skips it."
    )
    evaluation_datasets_paths: list[DatasetSource] = _doc([], "Extra evaluation datasets (paths or recipes).")
    evaluation_datasets_names: list[str] = _doc([], "Their names, used in metric names 'eval {name}_{split} ...'.")
    evaluation_datasets_splits: list[str] = _doc([], "Their splits; one per path.")
    max_length: int | None = _doc(
        None,
        "Token limit of a row of the batch layout, for every split the run encodes: prompt + the longer response "
        "(share_prompt: prompt + chosen + rejected; GRAM formats: the whole row with both answers, the longer of the "
        "two "
        "orders); pairs over it follow over_length. null: no limit.",
        ge=1,
    )
    max_prompt_length: int | None = _doc(
        None,
        "Token limit of the prompt part (the user turn with the generation prompt; objectives with a separate "
        f"prompt: {_SEPARATE_PROMPT}); below max_length. null: no limit.",
        ge=1,
    )
    over_length: Literal["drop", "truncate"] = _doc(
        "drop",
        "Pairs over max_length / max_prompt_length: 'drop' them (TRL's RewardTrainer), or 'truncate': the "
        "prompt keeps its end (to max_prompt_length, further if the responses do not fit), each response its start, "
        "both keep the chat template's tokens (BOS and headers, the end-of-turn suffix EX-RM reads); in gen_rm and "
        "GRAM rows the answers are cut (question kept). Counts per split in the summary's length_limits.",
    )
    is_ham_cycle_task: bool = _doc(False, "Hamiltonian-cycle task: adds the <sep>/<edge_sep> tokens to the vocabulary.")
    ham_cycle: HamCycleSection = _section(HamCycleSection, "The Hamiltonian-cycle generation check.")

    # --- model and objective ------------------------------------------------------------------
    model: str = _doc(
        "smollm2-135m-instruct",
        "Hub id, local folder, or built-in name (smollm2-135m-instruct, tiny-random-llama, ...).",
    )
    model_cache_dir: str | None = _doc(None, "cache_dir for hub downloads ('' or null: the HF default).")
    model_parallel_without_accelerate: bool = _doc(
        False, "Load with device_map='auto' to split a large model over GPUs."
    )
    objective: str = _doc(
        DEFAULT_OBJECTIVE, f"A registered objective (rm_exps.objectives): {', '.join(sorted(OBJECTIVES))}."
    )
    kl_coeff: float = _doc(0.01, "IM-RM / DPO beta: reward = kl_coeff * (log pi - log pi_ref).")
    no_ref_model: bool = _doc(False, "IM-RM without a reference model: reward = kl_coeff * log pi.")
    use_all_response_hidden_embeddings: bool = _doc(
        False, "EX-RM reward = mean head output over response tokens (else the last token)."
    )
    use_bf16: bool = _doc(False, "The reference's bf16 switch: with precision 'auto', true means bf16 mixed precision.")
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16_pure"] = _doc(
        "auto",
        "Training precision. 'bf16': mixed (fp32 weights and optimizer state, bf16 autocast; under DeepSpeed its bf16 "
        "mode with fp32 master weights); 'fp16': mixed with loss scaling (CUDA only); 'fp32'; 'bf16_pure': weights, "
        "gradients and optimizer state in bf16 (an Adam step below half a bf16 ulp is lost: at lr 1e-5 weights with "
        "|w| > 0.005 stop moving). 'auto': bf16 with use_bf16, else the launch's mixed precision, else fp32. Frozen "
        "models loaded on their own (generator, judge, samplers) are bf16 under bf16 and bf16_pure.",
    )
    judge: JudgeSection = _section(JudgeSection, "GRAM's generative judge.")
    gradient_checkpointing: bool = _doc(
        False, "Recompute activations in the backward pass: less memory, about 30% more compute."
    )
    gradient_checkpointing_layers: int | None = _doc(
        None,
        "With gradient_checkpointing: recompute only the first N decoder layers (null: all); the others keep their "
        "activations (less recompute, more memory).",
        ge=0,
    )
    lora: LoraSection = _section(LoraSection, "LoRA adapters.")
    icrm: IcrmSection = _section(IcrmSection, "ICRM: intra-trajectory consistency (arXiv 2506.09096).")
    best_of_n: BestOfNSection = _section(BestOfNSection, "Best-of-N, DPO pairs and policy evaluation.")

    # --- optimization -------------------------------------------------------------------------
    optimizer: Literal["adam", "rmsprop", "sgd"] = _doc(
        "adam", "adam = AdamW (adam_beta1/2, adam_epsilon); rmsprop; sgd."
    )
    lr: float = _doc(1e-6, "Peak learning rate (constant unless lr_scheduler_type says otherwise).")
    lr_scheduler_type: Literal[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "inverse_sqrt",
        "cosine_with_min_lr",
        "cosine_warmup_with_min_lr",
        "warmup_stable_decay",
    ] = _doc(
        "constant", "Learning-rate schedule over the run's optimizer steps (transformers.get_scheduler; TRL's name)."
    )
    lr_scheduler_kwargs: dict[str, Any] = _doc(
        {}, "Extra arguments of the schedule, e.g. {'min_lr_rate': 0.1} for cosine_with_min_lr, {'num_cycles': 2}."
    )
    warmup_ratio: float = _doc(0.0, "Warm-up as a fraction of the run's optimizer steps (rounded up).", ge=0, le=1)
    warmup_steps: int = _doc(0, "Warm-up optimizer steps; > 0 overrides warmup_ratio.", ge=0)
    weight_decay: float = _doc(0.0, "Decoupled weight decay of matrices (biases and norm weights never decay).", ge=0)
    adam_beta1: float = _doc(0.9, "AdamW beta1.", ge=0, lt=1)
    adam_beta2: float = _doc(0.999, "AdamW beta2.", ge=0, lt=1)
    adam_epsilon: float = _doc(1e-8, "AdamW epsilon.", gt=0)
    max_grad_norm: float | None = _doc(
        None,
        "Clip the gradient's global norm to this before each optimizer step (logged as 'train grad norm'); null: no "
        "clipping.",
        gt=0,
    )
    epochs: int = _doc(
        1, "Training epochs; 0: evaluate the model as loaded (e.g. score best-of-N samples with a saved RM).", ge=0
    )
    batch_size: int = _doc(8, "Pairs per micro-batch per process.", ge=1)
    micro_batch_size: int | None = _doc(
        None,
        "Pairs per forward/backward chunk of a batch: less memory, same gradients and steps; null: the whole batch.",
        ge=1,
    )
    eval_batch_size: int | None = _doc(None, "Pairs per evaluation batch; null: batch_size.")
    cache_reference_logps: bool = _doc(
        True,
        "Keep frozen-reference log-probs on disk under data_files_dir/reference_logps, keyed by reference weights "
        "and token ids, for later runs.",
    )
    share_prompt: bool | None = _doc(
        None,
        f"One row per pair (prompt + chosen + rejected) so the prompt is encoded once ({_SHARE_PROMPT}): the "
        "same losses, rewards and gradients, faster. null: on for the objectives that take it, unless max_length is "
        "set (a limit is per row of the layout: the shared row holds both responses); false: off. On the CPU its "
        "attention skips the scores the pair mask rules out.",
    )
    group_by_length: bool = _doc(
        False, "Training batches of similar lengths (shuffled groups of 50 batches, sorted within): less padding."
    )
    gradient_accumulation_steps: int = _doc(
        1, "Micro-batches per optimizer step; the step equals the full-batch gradient."
    )
    validate_every: int = _doc(1, "Validate every this many epochs (and always after the last).", ge=1)
    save_model: bool = _doc(False, "Save the final model and its tokenizer into the run folder.")
    checkpoint_every_steps: int = _doc(
        0,
        "Save a resumable checkpoint (model, optimizer, schedule, RNG, data position) every this many optimizer "
        "steps and at each epoch end; 0: none. A run with a checkpoint and no summary resumes from its latest one.",
        ge=0,
    )
    checkpoint_keep: int = _doc(
        2, "Checkpoints kept per run (the oldest are deleted); all are deleted when the run completes.", ge=1
    )

    # --- agentic evaluation (RewardAgent: the RM plus verifiers) --------------------------------
    agentic: AgenticEvalConfig | None = _doc(
        None, "RM + verifier evaluation: {'data': items file, ...agent settings}; see docs/AGENTIC.md. null: off."
    )

    # --- Persona controlled experiment ----------------------------------------------------------
    persona: PersonaSection = _section(PersonaSection, "The Persona controlled experiment.")

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        """Reference aliases become flat names, flat names of sectioned fields go into their sections."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias, name in ALIASES.items():
            if alias in data:
                value = data.pop(alias)
                data.setdefault(name, value)
        both = []
        for flat, (section, name) in FLAT_NAMES.items():
            if flat not in data:
                continue
            given = data.get(section, {})
            if isinstance(given, BaseModel):
                given = {k: getattr(given, k) for k in given.model_fields_set}
            if not isinstance(given, dict):
                continue  # the section's own type error is reported; the flat key stays, reported as unknown
            if name in given:
                both.append(f"'{flat}' and '{section}.{name}'")
                continue
            data[section] = {**given, name: data.pop(flat)}
        if both:
            raise ValueError(f"a field is given twice, by its flat and its section name: {', '.join(both)}; give one")
        return data

    @field_validator("model_cache_dir")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("lr")
    @classmethod
    def _finite_positive_lr(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"lr must be a finite number above 0, got {v}")
        return v

    @field_validator("gradient_accumulation_steps")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        return max(v, 1)  # the reference treats <= 0 as 1

    @property
    def shares_prompt(self) -> bool:
        """Whether the run uses the shared-prompt layout: as set, or (null) wherever the objective takes it and
        no max_length is set (which pairs a limit keeps depends on the layout's rows: null must not change it)."""
        if self.share_prompt is not None:
            return self.share_prompt
        objective = OBJECTIVES.get(self.objective)
        return bool(objective and objective.supports_share_prompt) and self.max_length is None

    @property
    def is_persona(self) -> bool:
        return self.persona.answer_matching_behavior is not None

    @property
    def resolved_precision(self) -> Precision:
        """The precision this run trains in (`auto` resolved; reads the launch's mixed precision)."""
        return resolve_precision(self.precision, self.use_bf16)

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    def owner(self, flat_name: str) -> tuple[BaseModel, str]:
        """The model holding the field a flat name names and its name there (a section, or the config itself)."""
        if flat_name in FLAT_NAMES:
            section, name = FLAT_NAMES[flat_name]
            return getattr(self, section), name
        return self, flat_name

    def flat(self) -> dict[str, Any]:
        """The reference's flat view {flat name: value}: what the hash covers and config.json records.
        The agentic settings appear as given (defaults not spelled out)."""
        dump = self.model_dump(exclude={"agentic"})
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name == "agentic":
                out[name] = None if self.agentic is None else self.agentic.as_given()
            elif name in SECTIONS:
                out.update({SECTION_FLAT_NAMES[name, field]: value for field, value in dump[name].items()})
            else:
                out[name] = dump[name]
        return out

    def hash(self) -> str:
        """A short digest of everything that changes what the run computes (fields at their default
        left out), recorded in summaries as `config_hash` for people and reports. Whether a finished
        run is reused is not decided by it (a changed default would leave it unchanged): see
        `differences_from_recorded`."""
        defaults = flat_defaults()
        payload = {k: v for k, v in self.flat().items() if k not in PRESENTATION_FIELDS and v != defaults[k]}
        if self.use_bf16 and self.precision == "auto":  # use_bf16 once trained pure-bf16 weights: those runs are stale
            payload["precision"] = "bf16"
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def differences_from_recorded(self, recorded: dict[str, Any]) -> list[str]:
        """Why a run folder whose config.json recorded `recorded` (a flat view) does not hold this
        config's results, one 'field: recorded -> now' per field, sorted; empty when it does (a
        finished run is reused).

        Presentation fields never count. Every other field config.json recorded must resolve to the
        same value now: the recorded values go through this model's validation (aliases, sorting of
        bon_n, list vs tuple, 1e-06 vs 0.000001) before they are compared, and a recorded value that
        no longer validates differs. A field config.json did not record (added since) counts as equal
        only if its value now is the field's default. A recorded field the code no longer knows makes
        the run stale (what it meant cannot be checked). A config.json with use_bf16 true and no
        `precision` (use_bf16 then trained pure-bf16 weights; now it means mixed precision) is stale.
        """
        fields = flat_defaults()
        recorded = {
            **{ALIASES[k]: v for k, v in recorded.items() if k in ALIASES},
            **{k: v for k, v in recorded.items() if k not in ALIASES},
        }
        known = {k: v for k, v in recorded.items() if k in fields and k not in PRESENTATION_FIELDS}
        current = self.flat()
        now = _plain(current)
        try:
            then = _plain(RunConfig.model_validate({**current, **known}).flat())
        except ValidationError:  # some recorded value is not valid now: validate them one by one
            then = {}
            for k, v in known.items():
                try:
                    then[k] = _plain(RunConfig.model_validate({**current, k: v}).flat()[k])
                except ValidationError:
                    then[k] = _plain(v)  # differs from the (valid) value now
        diffs = []
        for k in sorted(set(recorded) | set(fields)):
            if k in PRESENTATION_FIELDS:
                continue
            if k not in fields:
                diffs.append(f"{k}: {recorded[k]!r} -> <no such field now>")
            elif k in known:
                if not _same(then[k], now[k]):
                    diffs.append(f"{k}: {then[k]!r} -> {now[k]!r}")
            elif k == "precision" and "use_bf16" in known and then["use_bf16"] is True:
                diffs.append(f"precision: <not recorded; use_bf16 then trained pure bf16> -> {now[k]!r}")
            elif not _same(_plain(fields[k]), now[k]):
                diffs.append(f"{k}: <not recorded> -> {now[k]!r}")
        return diffs


# The sections of the run config: name -> model.
SECTIONS: dict[str, type[Section]] = {
    name: f.annotation
    for name, f in RunConfig.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
}


def flat_defaults() -> dict[str, Any]:
    """Every flat field's default (the flat view of a config that sets nothing; not cached, so a test may
    change a default in place)."""
    return RunConfig().flat()


def config_rule_errors(config: RunConfig) -> list[str]:
    """Every rule that relates fields of a run to each other, with the objective's own
    (`Objective.config_errors`). No files are read: the plan checks those."""
    errors = []
    bon = config.best_of_n
    if config.objective not in OBJECTIVES:
        name, known = config.objective, ", ".join(sorted(OBJECTIVES))
        errors.append(f"unknown objective '{name}'{did_you_mean(name, OBJECTIVES)}; known: {known}")
    else:
        errors += OBJECTIVES[config.objective].config_errors(config)
    if bon.policy is not None and bon.selection != "scores" and bon.dpo_pairs_num_prompts != 0:
        errors.append("dpo_pairs_num_prompts needs per-sample scores: use bon_selection 'scores' to select DPO pairs")
    if config.micro_batch_size is not None and config.micro_batch_size > config.batch_size:
        errors.append(f"micro_batch_size ({config.micro_batch_size}) must not exceed batch_size ({config.batch_size})")
    if config.gradient_checkpointing_layers is not None and not config.gradient_checkpointing:
        errors.append(
            "gradient_checkpointing_layers chooses which layers recompute: it needs gradient_checkpointing: true"
        )
    # max_prompt_length leaves room for the responses; whether the objective's rows have a prompt part of their
    # own is its check. (Whether a limit leaves any pair needs the data tokenized: the run checks.)
    limit, prompt_limit = config.max_length, config.max_prompt_length
    if limit is not None and prompt_limit is not None and prompt_limit >= limit:
        errors.append(f"max_prompt_length {prompt_limit} must be below max_length {limit}: the responses need room")
    if config.is_persona:
        both = set(config.persona.eval_yes_tokens) & set(config.persona.eval_no_tokens)
        if both:
            errors.append(f"eval tokens {sorted(both)} are listed on both the yes and the no side")
    paths, names, splits = (
        config.evaluation_datasets_paths,
        config.evaluation_datasets_names,
        config.evaluation_datasets_splits,
    )
    if not len(paths) == len(names) == len(splits):
        errors.append(
            "evaluation_datasets_paths, evaluation_datasets_names and evaluation_datasets_splits must "
            f"have the same length (got {len(paths)}, {len(names)}, {len(splits)})"
        )
    if len(set(names)) != len(names):
        errors.append("evaluation_datasets_names must be unique")
    if bon.reference != "first" and not bon.reference.startswith("run:"):
        errors.append(f"bon_reference must be 'first' or 'run:<experiment_name>', got {bon.reference!r}")
    if bon.dpo_pairs_num_prompts != 0:
        if bon.policy is None:
            errors.append("dpo_pairs_num_prompts needs bon_policy (the policy whose samples are scored)")
        if config.is_persona:
            errors.append("dpo_pairs_num_prompts needs a preference dataset; Persona runs build theirs from records")
    return errors


def _plain(value: Any) -> Any:
    """The value as config.json holds it (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def _same(a: Any, b: Any) -> bool:
    return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN


# Every key a plan may give a run, for closest-name suggestions: flat names, aliases, section names and
# `section.field` names.
FIELD_NAMES: tuple[str, ...] = (
    tuple(flat_defaults())
    + tuple(ALIASES)
    + tuple(SECTIONS)
    + tuple(f"{section}.{name}" for section, model in SECTIONS.items() for name in model.model_fields)
)


def derive_seed(experiment_name: str, repetition: int) -> int:
    """The seed of a run whose plan says random_seed -1: stable across machines and reruns."""
    digest = hashlib.sha256(f"{experiment_name}|rep{repetition}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31 - 1)


def describe_fields() -> str:
    """Markdown tables of the top-level fields and of each section (used to keep docs/CONFIG.md current)."""
    rows = ["| field | default | description |", "|---|---|---|"]
    for name, f in RunConfig.model_fields.items():
        if name in SECTIONS:
            rows.append(f"| `{name}` | section | {f.description} See [`{name}`](#{name}). |")
        else:
            rows.append(f"| `{name}` | `{json.dumps(f.default)}` | {f.description} |")
    for section, model in SECTIONS.items():
        rows += [
            "",
            f"## `{section}`",
            "",
            " ".join((model.__doc__ or "").split()),
            "",
            "| field | flat name | default | description |",
            "|---|---|---|---|",
        ]
        for name, f in model.model_fields.items():
            flat = SECTION_FLAT_NAMES[section, name]
            rows.append(f"| `{section}.{name}` | `{flat}` | `{json.dumps(f.default)}` | {f.description} |")
    return "\n".join(rows)


def config_doc() -> str:
    """docs/CONFIG.md, regenerated with `python -m rm_exps.config > docs/CONFIG.md`."""
    return (
        "# Run config fields\n\nEvery field a run reads, with its default; a plan may omit any of them. "
        "Generated from `rm_exps/config.py` with `python -m rm_exps.config > docs/CONFIG.md` "
        "(a test keeps it current).\n\nFamilies of fields are sections. A plan gives a section's field by its "
        'flat name (the reference harness\'s, e.g. `"lora_r": 8`) or nested (`"lora": {"r": 8}`), not both; '
        "`--set` takes either (`--set lora.r=8`, `--set lora_r=8`). config.json records the flat names.\n\n"
        "Aliases accepted for the reference plans: `evalution_datasets_splits` → `evaluation_datasets_splits`, "
        "`wandb_resume_path` → `wandb_resume_id`.\n\n" + describe_fields() + "\n"
    )


if __name__ == "__main__":
    print(config_doc(), end="")
