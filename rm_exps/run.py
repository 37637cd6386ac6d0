"""One run end to end: data -> model -> objective -> trainer -> evaluators -> run folder."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from rm_exps.batching import (
    LengthGroupedSampler,
    LengthLimits,
    PairCollator,
    SharedPromptCollator,
    encode_pairs,
    no_pairs_left_message,
)
from rm_exps.checkpoint import latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from rm_exps.config import RunConfig
from rm_exps.distributed import agreed, process_state, zero_stage
from rm_exps.eval.ham_cycle import HamCycleGenerationEvaluator
from rm_exps.eval.pairwise import PairwiseEvaluator
from rm_exps.eval.persona import PersonaShiftEvaluator
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.adapters import apply_memory_options
from rm_exps.outputs import FINISHED, RunFolder, build_summary, environment, eval_metrics_table, write_json_atomic
from rm_exps.ownership import write_owner
from rm_exps.plan import RunSpec, no_dpo_prompts_message
from rm_exps.plots import save_metric_plots
from rm_exps.trackers import Trackers
from rm_exps.train import Diverged, History, Trainer, build_optimizer, build_scheduler, optimizer_steps

log = logging.getLogger("rm_exps")


# --- data ------------------------------------------------------------------------------------


def resolve_dataset(source: str | dict, config: RunConfig) -> str:
    """A prepared folder/file path as is; a recipe prepared once and cached under data_files_dir."""
    if isinstance(source, str):
        return source
    from rm_exps.data.prepare import prepare_dataset

    return str(prepare_dataset(source, data_dir=config.data_files_dir, load_tokenizer=load_tokenizer))


def load_train_test(config: RunConfig) -> tuple[Any, Any]:
    """The run's train and test splits, subsampled with dataset_prep_random_seed."""
    from rm_exps.data.preference import load_preference_dataset, subsample

    if config.is_persona:
        from rm_exps.data.persona import build_persona_pairs, load_persona_records

        splits = build_persona_pairs(
            load_persona_records(config.dataset_path),
            config.answer_matching_behavior_to_use,
            num_train=config.num_train_samples,
            num_test=config.num_test_samples,
            seed=config.dataset_prep_random_seed,
            yes_tokens=config.output_tokens_matching_yes,
            no_tokens=config.output_tokens_matching_no,
            yes_prefixes=config.prefixes_matching_yes,
            no_prefixes=config.prefixes_matching_no,
        )
        return splits["train"], splits["test"]
    splits = load_preference_dataset(resolve_dataset(config.dataset_path, config))
    generator = torch.Generator().manual_seed(config.dataset_prep_random_seed)  # train, then test: one stream
    return (
        subsample(splits["train"], config.num_train_samples, generator),
        subsample(splits["test"], config.num_test_samples, generator),
    )


def evaluation_sets(config: RunConfig, train: Any, test: Any) -> dict[str, Any]:
    """`train` (a seeded subset of num_test_samples; with eval_train_subset), `test`, then
    `{name}_{split}` per evaluation set."""
    from rm_exps.data.preference import load_preference_dataset, subsample

    seed = config.dataset_prep_random_seed
    if config.is_persona:  # the reference scores the whole (small) Persona train split
        return {"train": train, "test": test}
    sets = {"train": subsample(train, config.num_test_samples, seed, sort=True)} if config.eval_train_subset else {}
    sets["test"] = test
    for name, path, split in zip(
        config.evaluation_datasets_names, config.evaluation_datasets_paths, config.evaluation_datasets_splits
    ):
        splits = load_preference_dataset(resolve_dataset(path, config))
        if split not in splits:
            raise ValueError(f"evaluation dataset '{name}' has no split '{split}' (it has {', '.join(splits)})")
        sets[f"{name}_{split}"] = subsample(splits[split], config.num_test_samples, seed, sort=True)
    return sets


def encode_split(split: str, ds: Any, tokenizer: Any, fmt: str, config: RunConfig, counts: dict[str, Any]) -> Any:
    """encode_pairs under the run's length limits; what they dropped and truncated goes to the log and
    to counts["length_limits"][split] (the summary). A split they leave without pairs fails the run."""
    limits = LengthLimits(config.max_length, config.max_prompt_length, config.over_length, config.share_prompt)
    pairs = encode_pairs(ds, tokenizer, fmt, config.judge_max_answer_tokens, limits)
    if pairs.length_counts is not None:
        counts.setdefault("length_limits", {})[split] = pairs.length_counts.summary()
        log.info("length limits (%s), %s: %s", limits.describe(), split, pairs.length_counts.summary())
        if not len(pairs):
            raise ValueError(no_pairs_left_message(split, limits, pairs.length_counts))
    return pairs


# --- bookkeeping -----------------------------------------------------------------------------


@contextlib.contextmanager
def run_logging(folder: RunFolder, config: RunConfig, is_main: bool) -> Iterator[None]:
    """Send the package logger to run.log (main process) for the duration of the run."""
    handler: logging.Handler | None = None
    if is_main and config.save_logs:
        handler = logging.FileHandler(folder.file("run.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    console = [h for h in log.handlers if getattr(h, "rm_exps_console", False)]
    for h in console:
        h.setLevel(logging.WARNING if config.disable_console_log or not is_main else logging.INFO)
    try:
        yield
    finally:
        log.setLevel(previous_level)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def fresh_accelerator(config: RunConfig) -> Accelerator:
    """An Accelerator for this run in the run's precision; state left by a previous run in the same
    process is dropped (the process group itself is kept).

    The plan owns what changes the gradient step, whatever the launch config says: the accumulation
    steps (accelerate reads them from the environment before its argument, and the reference's
    DeepSpeed configs say `auto`, which accelerate cannot parse; they must match the loss weighting
    of `train.loss_scales`) and gradient clipping (`max_grad_norm`, none by default: DeepSpeed's
    default, and accelerate's fill of `auto`, is a norm clip of 1.0, so DeepSpeed runs would
    silently train differently from every other launch)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    process_state()  # the process group, started once per process (gloo for DeepSpeed on CPU)
    with _environment(ACCELERATE_GRADIENT_ACCUMULATION_STEPS=str(config.gradient_accumulation_steps)):
        accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.resolved_precision.mixed_precision,
        )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        clip = plugin.deepspeed_config.get("gradient_clipping", "auto")
        if clip not in ("auto", 0, 0.0, config.max_grad_norm):
            log.warning(
                "the DeepSpeed config's gradient_clipping %s is replaced by the plan's max_grad_norm %s",
                clip,
                config.max_grad_norm,
            )
        plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm or 0.0
    return accelerator


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the block only (restored after)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


# --- the run ---------------------------------------------------------------------------------


def execute_run(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate one run; returns its summary (also written to the run folder by the
    main process). Failures inside the run are recorded, not raised; Ctrl-C is raised."""
    config, folder = spec.config, RunFolder(spec.run_dir)
    accelerator = fresh_accelerator(config)
    is_main = accelerator.is_main_process
    resume_from = resumable_checkpoint(folder, config, accelerator)
    if is_main:
        folder.create()
        if resume_from is None:
            folder.clear_previous_attempt()
            remove_checkpoints(folder.path)
        folder.write_config(config.model_dump())
        write_owner(folder.path)
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    state: dict[str, Any] = {"history": History(), "trainer": None, "counts": {}, "trackers": None, "precompute_s": 0.0}
    with run_logging(folder, config, is_main):
        log.info(
            "run %s: objective %s, model %s, seed %d (full config in %s)",
            spec.name,
            config.objective,
            config.model,
            config.random_seed,
            folder.file("config.json"),
        )
        try:
            _train_and_evaluate(config, folder, accelerator, state, resume_from)
            status, error = "completed", None
        except Diverged as e:
            status, error = "diverged", str(e)
            log.warning("run %s diverged: %s", spec.name, e)
        except KeyboardInterrupt:
            log.warning("run %s interrupted", spec.name)
            raise
        except Exception as e:  # recorded as failed; the sweep goes on
            status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
            log.error("run %s failed:\n%s", spec.name, traceback.format_exc())
        trainer: Trainer | None = state["trainer"]
        train_s = trainer.train_s if trainer else 0.0
        tokens = trainer.train_tokens if trainer else 0
        padded = trainer.padded_tokens if trainer else 0
        extra = {
            "config_hash": config.hash(),
            "random_seed": config.random_seed,
            **state["counts"],
            "wall_s": round(time.perf_counter() - started, 3),
            "train_s": round(train_s, 3),
            "eval_s": round(trainer.eval_s, 3) if trainer else 0.0,
            "precompute_s": round(state["precompute_s"], 3),  # frozen reference log-probs, before training
            "train_tokens": tokens,
            "train_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
            "padding_fraction": round(padded / (tokens + padded), 4) if tokens + padded else None,
            "peak_mem_mb": round(peak_memory_mb(accelerator.device), 1),
            "environment": {
                **environment(str(accelerator.device), accelerator.num_processes),
                "torch_threads": torch.get_num_threads(),
                "precision": config.resolved_precision.name,
                "distributed_type": str(accelerator.distributed_type.value),
                "zero_stage": zero_stage(accelerator),
            },
        }
        if error:
            extra["error"] = error
        summary = build_summary(config, state["history"], status, extra)
        if is_main:
            folder.write_summary(summary)
            log.info("run %s %s, score %s = %s", spec.name, status, config.score_metric_name, summary["score"])
            if status in FINISHED:
                remove_checkpoints(folder.path)  # the summary now holds the result; checkpoints are only for resuming
                folder.drop_previous_result()
        if state["trackers"] is not None:
            state["trackers"].finish()  # after summary.json, so it is uploaded too
    accelerator.wait_for_everyone()
    return summary


def resumable_checkpoint(folder: RunFolder, config: RunConfig, accelerator: Accelerator) -> Path | None:
    """The checkpoint this run continues from: the latest one of a run of the same config whose folder
    holds no finished result (no summary: killed or preempted in process; a `failed` one: e.g. a child
    or SLURM job that died, recorded by its parent). Decided by the main process, the same on every rank."""
    found = None
    if accelerator.is_main_process and (folder.summary() or {}).get("status") not in FINISHED:
        found = latest_checkpoint(folder.path, config.hash())
    return agreed(found)


def _train_and_evaluate(
    config: RunConfig,
    folder: RunFolder,
    accelerator: Accelerator,
    state: dict[str, Any],
    resume_from: Path | None = None,
) -> None:
    if accelerator.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        # accelerate accepts it, then neither autocasts nor scales: the run would silently be fp32
        raise ValueError(
            f"precision 'fp16' needs a CUDA GPU (loss-scaled fp16 autocast); on {accelerator.device} "
            "use 'bf16' (mixed) or 'fp32'"
        )
    log.info(
        "precision %s: trainable weights %s, autocast %s",
        config.resolved_precision.name,
        config.resolved_precision.weights_dtype,
        accelerator.mixed_precision,
    )
    set_seed(config.random_seed)
    extra_tokens = ()
    if config.is_ham_cycle_task:
        from rm_exps.data.hamiltonian import SPECIAL_TOKENS

        extra_tokens = SPECIAL_TOKENS
    tokenizer = load_tokenizer(config.model, extra_tokens=extra_tokens, cache_dir=config.model_cache_dir)
    objective = build_objective(config, tokenizer)

    with accelerator.main_process_first():  # recipes are prepared once, by the main process
        train, test = load_train_test(config)
        eval_sets = evaluation_sets(config, train, test)
    state["counts"] = {"num_train_samples": len(train), "num_test_samples": len(test)}
    log.info("num train samples %d, num test samples %d; train sample: %s", len(train), len(test), dict(train[0]))

    fmt = objective.input_format
    train_pairs = encode_split("train", train, tokenizer, fmt, config, state["counts"])
    train_collate = objective.train_collator(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(config.random_seed)
    if config.group_by_length:
        sampler = LengthGroupedSampler(train_pairs.lengths(config.share_prompt), config.batch_size, generator)
        train_loader = DataLoader(train_pairs, batch_size=config.batch_size, sampler=sampler, collate_fn=train_collate)
    else:
        train_loader = DataLoader(
            train_pairs, batch_size=config.batch_size, shuffle=True, collate_fn=train_collate, generator=generator
        )
    # Evaluation batches go longest first (little padding); benchmark-style sets (RewardBench) label each
    # pair with its subset, reordered alike, for per-subset and section accuracies.
    collate = (SharedPromptCollator if config.share_prompt else PairCollator)(tokenizer.pad_token_id)
    eval_loaders, subsets = {}, {}
    for key, ds in eval_sets.items():
        pairs = encode_split(f"eval {key}", ds, tokenizer, fmt, config, state["counts"])
        order = pairs.length_order(config.share_prompt)
        eval_loaders[key] = DataLoader(
            pairs.select(order), batch_size=config.effective_eval_batch_size, collate_fn=collate
        )
        if "subset" in ds.column_names:
            subsets[key] = [ds["subset"][pairs.rows[i]] for i in order]

    model = apply_memory_options(objective.build_model(), config)
    objective.setup(accelerator.device)
    extra_evaluators: list[Any] = []
    if config.is_ham_cycle_task and objective.name in GENERATIVE_OBJECTIVES:
        extra_evaluators.append(ham_cycle_generation(config, tokenizer, objective, train, test))
    if config.is_persona:
        extra_evaluators.append(
            PersonaShiftEvaluator(
                objective,
                tokenizer,
                {"train": train, "test": test},
                config.eval_output_tokens_matching_yes,
                config.eval_output_tokens_matching_no,
                config.eval_prefixes_matching_yes,
                config.eval_prefixes_matching_no,
                seed=config.dataset_prep_random_seed,
                batch_size=config.effective_eval_batch_size,
            )
        )
    if config.agentic is not None:
        from rm_exps.eval.agentic import agentic_evaluator

        extra_evaluators.append(
            agentic_evaluator(config.agentic, objective, tokenizer, config.effective_eval_batch_size, folder.path)
        )
    if config.bon_policy is not None:
        extra_evaluators.append(best_of_n(config, tokenizer, objective, train, test, accelerator, folder))
    if config.policy_eval_num_prompts != 0 and objective.name in GENERATIVE_OBJECTIVES:
        extra_evaluators.append(policy_evaluation(config, tokenizer, objective, test, accelerator))
    # Frozen quantities (IM-RM reference log-probs, ICRM generator probabilities) are computed once
    # for every example any loader will serve.
    loaders = [
        train_loader,
        *eval_loaders.values(),
        *(l for e in extra_evaluators for l in getattr(e, "loaders", {}).values()),
    ]
    if objective.precompute_train_only:
        loaders = [train_loader]
    start = time.perf_counter()
    precompute_frozen(config, objective, [loader.dataset for loader in loaders], collate, accelerator)
    state["precompute_s"] = time.perf_counter() - start

    optimizer = build_optimizer(config, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = build_scheduler(
        config, optimizer, optimizer_steps(len(train_loader), config.gradient_accumulation_steps, config.epochs)
    )
    eval_loaders = {key: accelerator.prepare(loader) for key, loader in eval_loaders.items()}
    evaluators = [PairwiseEvaluator(objective, eval_loaders, subsets), *extra_evaluators]
    trackers = state["trackers"] = Trackers(config, folder.path, active=accelerator.is_main_process)
    trackers.watch(model)

    def emit(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            folder.append_metrics(record)
            trackers.log(record)

    trainer = Trainer(
        config,
        accelerator,
        objective,
        model,
        optimizer,
        train_loader,
        len(train_pairs),
        evaluators=evaluators,
        emit=emit,
        history=state["history"],
        scheduler=scheduler,
        order_generator=generator,
    )
    trainer.on_validation = lambda history: _after_validation(config, folder, accelerator, history)
    if config.checkpoint_every_steps:
        trainer.checkpoint = lambda: save_checkpoint(
            accelerator, folder.path, trainer, config.hash(), folder.metrics_lines(), config.checkpoint_keep
        )
    if resume_from is not None:
        run_state = load_checkpoint(accelerator, resume_from, trainer)
        if accelerator.is_main_process:
            folder.truncate_metrics(run_state["metrics_lines"])  # records written after the checkpoint are redone
        log.info(
            "resumed from %s: epoch %d, micro-batch %d, optimizer step %d",
            resume_from,
            trainer.epoch + 1,
            trainer.batches_done,
            trainer.optimizer_steps,
        )
    state["trainer"] = trainer
    trainer.fit()
    if config.save_model:
        save_model(objective, model, tokenizer, folder, accelerator, config)


def precompute_frozen(
    config: RunConfig, objective: Any, datasets: list[Any], collate: Any, accelerator: Accelerator
) -> None:
    """objective.precompute, with the reference log-probs read from / added to the on-disk cache."""
    from rm_exps.distributed import zero3_enabled
    from rm_exps.ref_cache import ReferenceLogpsCache, cache_fingerprint

    reference = objective.frozen_reference()
    cache = None
    if reference is not None and config.cache_reference_logps and not zero3_enabled():  # ZeRO-3: shards only
        cache = ReferenceLogpsCache(
            Path(config.data_files_dir) / "reference_logps", cache_fingerprint(reference, accelerator.mixed_precision)
        )
        hits = cache.attach(datasets)
        log.info(
            "reference log-probs: %d of %d examples from the cache %s", hits, sum(len(d) for d in datasets), cache.path
        )
    with accelerator.autocast():  # the policy's precision: an IM-RM starts at reward 0 (up to bf16 batch-shape noise)
        objective.precompute(datasets, collate, config.effective_eval_batch_size, accelerator.device)
    if cache is not None:
        cache.store(datasets, write=accelerator.is_main_process)
    accelerator.wait_for_everyone()


GENERATIVE_OBJECTIVES = ("im_rm", "sft", "dpo")  # objectives whose trainable model is a policy that can generate


def prompts_and_answers(
    ds: Any, n: int, seed: int, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], list[str] | None]:
    """Distinct prompts of a split (minus `exclude`), a seeded subset of n (<= 0: all), with the
    gold `answer` column when the data has one."""
    from rm_exps.data.preference import subsample

    has_answers = "answer" in ds.column_names
    answers_of: dict[str, str] = {}
    for prompt, answer in zip(ds["prompt"], ds["answer"] if has_answers else [""] * len(ds)):
        if prompt not in exclude:
            answers_of.setdefault(prompt, answer)
    if not answers_of:
        raise ValueError(
            "no prompts left for sampling: every train prompt is a training or test prompt of this "
            "run (make the dataset's train split larger than num_train_samples)"
        )
    prompts = list(subsample(datasets.Dataset.from_dict({"prompt": list(answers_of)}), n, seed, sort=True)["prompt"])
    return prompts, ([answers_of[p] for p in prompts] if has_answers else None)


def _judge(config: RunConfig) -> Any:
    from rm_exps.eval.judge import Judge

    if config.judge_model is None:
        return None
    return Judge(
        config.judge_model,
        config.effective_eval_batch_size,
        config.resolved_precision.frozen_dtype,
        config.model_cache_dir,
    )


def best_of_n(
    config: RunConfig,
    tokenizer: Any,
    objective: Any,
    train: Any,
    test: Any,
    accelerator: Accelerator,
    folder: RunFolder,
) -> Any:
    """Samples of `bon_policy` for the test prompts (and train prompts for DPO pairs), scored by this run."""
    from rm_exps.eval.best_of_n import BestOfNEvaluator, SampleSet
    from rm_exps.eval.sampling import Decoding, cached_samples
    from rm_exps.outputs import BEST_OF_N_DIR, DPO_PAIRS_DIR

    seed = config.dataset_prep_random_seed  # not random_seed: every RM of a plan scores the same samples
    decoding = Decoding(
        n=max(config.bon_n),
        max_new_tokens=config.bon_max_new_tokens,
        do_sample=True,
        temperature=config.bon_temperature,
        top_p=config.bon_top_p,
        batch_size=config.bon_batch_size,
        seed=seed,
    )
    dtype = config.resolved_precision.frozen_dtype
    sets = {}
    splits = [("test", test, config.bon_num_prompts, frozenset())]
    if config.dpo_pairs_num_prompts != 0:
        # Prompts of the whole train split that the reward model was not trained on (and, by default,
        # no test prompt): the policy is aligned on prompts new to the reward model.
        from rm_exps.data.preference import load_preference_dataset

        full_train = load_preference_dataset(resolve_dataset(config.dataset_path, config))["train"]
        exclude = frozenset(train["prompt"]) | (
            frozenset(test["prompt"]) if config.dpo_pairs_exclude_test_prompts else frozenset()
        )
        if not set(full_train["prompt"]) - exclude:
            raise ValueError(
                no_dpo_prompts_message(
                    config.dpo_pairs_num_prompts,
                    config.num_train_samples,
                    len(full_train),
                    len(train),
                    len(exclude),
                    config.dpo_pairs_exclude_test_prompts,
                )
            )
        splits.append(("train", full_train, config.dpo_pairs_num_prompts, exclude))
    for name, ds, n, exclude in splits:
        prompts, answers = prompts_and_answers(ds, n, seed, exclude)
        samples = cached_samples(
            config.bon_policy, prompts, decoding, config.data_files_dir, accelerator, dtype, config.model_cache_dir
        )
        sets[name] = SampleSet(prompts, answers, samples)
    reference = None if config.bon_reference == "first" else Path(config.bon_reference)
    return BestOfNEvaluator(
        objective,
        tokenizer,
        sets,
        config.bon_n,
        folder.file(BEST_OF_N_DIR),
        config.effective_eval_batch_size,
        judge=_judge(config),
        reference_dir=reference,
        pairs_dir=folder.file(DPO_PAIRS_DIR) if config.dpo_pairs_num_prompts != 0 else None,
        selection=config.bon_selection,
        max_answer_tokens=config.judge_max_answer_tokens,
        min_gap=config.dpo_pairs_min_gap,
    )


def policy_evaluation(config: RunConfig, tokenizer: Any, objective: Any, test: Any, accelerator: Accelerator) -> Any:
    """Greedy responses of the trained policy vs the starting policy (`model`) on test prompts."""
    from rm_exps.eval.policy import PolicyEvaluator
    from rm_exps.eval.sampling import Decoding, cached_samples

    prompts, answers = prompts_and_answers(test, config.policy_eval_num_prompts, config.dataset_prep_random_seed)
    decoding = Decoding(
        n=1,
        max_new_tokens=config.bon_max_new_tokens,
        do_sample=False,
        batch_size=config.bon_batch_size,
        seed=config.dataset_prep_random_seed,
    )
    start = cached_samples(
        config.model,
        prompts,
        decoding,
        config.data_files_dir,
        accelerator,
        config.resolved_precision.frozen_dtype,
        config.model_cache_dir,
    )
    return PolicyEvaluator(
        tokenizer, prompts, answers, [s[0] for s in start], objective.hf_model, decoding, _judge(config)
    )


def ham_cycle_generation(
    config: RunConfig, tokenizer: Any, objective: Any, train: Any, test: Any
) -> HamCycleGenerationEvaluator:
    from rm_exps.data.preference import subsample

    n, seed = config.ham_cycle_gen_num_samples, config.dataset_prep_random_seed
    prompts = {
        split: list(subsample(ds, n, seed, sort=True)["prompt"]) for split, ds in (("train", train), ("test", test))
    }
    return HamCycleGenerationEvaluator(
        tokenizer,
        prompts,
        objective.hf_model,
        num_tries=config.ham_cycle_gen_num_tries,
        max_new_tokens=config.ham_cycle_gen_max_new_tokens,
        do_sample=config.ham_cycle_gen_do_sample,
        batch_size=config.ham_cycle_gen_batch_size,
        seed=config.random_seed,
    )


def _after_validation(config: RunConfig, folder: RunFolder, accelerator: Accelerator, history: History) -> None:
    """eval_metrics.json after every validation; plots every save_every_num_val validations and after
    the last epoch's (always run) validation, so the final curves are drawn exactly once."""
    if not accelerator.is_main_process:
        return
    write_json_atomic(folder.file("eval_metrics.json"), eval_metrics_table(history))
    validations = len(next(iter(history.eval.values()), []))
    final = history.last_epoch == config.epochs - 1
    if config.save_metric_plots and (validations % config.save_every_num_val == 0 or final):
        save_metric_plots(folder.path, {**history.train, **history.eval})


def save_model(
    objective: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    folder: RunFolder,
    accelerator: Accelerator,
    config: RunConfig,
) -> None:
    """The final model and its tokenizer (added tokens included) in `model/`: the transformers model,
    or with LoRA the peft adapter (plus, with lora_save_merged, the merged model in `model_merged/`).

    Every process takes part: under DeepSpeed ZeRO-3, `get_state_dict` gathers the partitioned weights
    (the main process writes them)."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)
    hf_model = objective.hf_model(accelerator.unwrap_model(model))
    prefix = _prefix_of(accelerator.unwrap_model(model), hf_model)
    hf_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} if state is not None else None
    if accelerator.is_main_process:
        hf_model.save_pretrained(folder.file("model"), state_dict=hf_state, safe_serialization=True)
        tokenizer.save_pretrained(folder.file("model"))
        log.info("saved the final %s to %s", "LoRA adapter" if config.lora_r else "model", folder.file("model"))
        if config.lora_r and config.lora_save_merged:
            merged = hf_model.merge_and_unload()
            merged.save_pretrained(folder.file("model_merged"), safe_serialization=True)
            tokenizer.save_pretrained(folder.file("model_merged"))
            log.info("saved the merged model to %s", folder.file("model_merged"))


def _prefix_of(module: torch.nn.Module, child: torch.nn.Module) -> str:
    """ "model." when `child` is module.model: the state-dict prefix of the saved submodule."""
    for name, sub in module.named_modules():
        if sub is child:
            return f"{name}." if name else ""
    raise ValueError("the objective's hf_model is not a submodule of the trained module")
