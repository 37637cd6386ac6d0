"""One run end to end, in named steps: accelerator -> tokenizer -> data -> objective and model ->
evaluators -> precomputation -> trainer -> train -> save -> summary (see execute_run)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed

from rm_exps.checkpoint import latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from rm_exps.config import RunConfig
from rm_exps.distributed import agreed, process_state
from rm_exps.eval.pairwise import PairwiseEvaluator
from rm_exps.eval.setup import Evaluators, setup_evaluators
from rm_exps.logs import CONSOLE_MARK
from rm_exps.models import load_tokenizer
from rm_exps.objectives import build_objective
from rm_exps.objectives.adapters import apply_memory_options
from rm_exps.objectives.base import Objective
from rm_exps.outputs import FINISHED, RunFolder, build_summary, eval_metrics_table, write_json_atomic
from rm_exps.ownership import write_owner
from rm_exps.plan import RunSpec
from rm_exps.plots import save_metric_plots
from rm_exps.progress import quiet_library_output
from rm_exps.run_data import RunData, setup_data
from rm_exps.trackers import Trackers
from rm_exps.train import Diverged, History, Trainer, build_optimizer, build_scheduler, optimizer_steps

log = logging.getLogger("rm_exps")


# --- the run ---------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a run has reached so far. A failure can come at any step: the summary is built from what
    is here (the history so far, the sample counts known, the trainer's timings if it exists), and
    trackers that were started are closed."""

    history: History = field(default_factory=History)
    counts: dict[str, Any] = field(default_factory=dict)  # sample counts and length-limit effects, as known
    started: float = field(default_factory=time.perf_counter)
    precompute_s: float = 0.0
    trackers: Trackers | None = None
    trainer: Trainer | None = None


def execute_run(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate one run; returns its summary (also written to the run folder by the
    main process). Failures inside the run are recorded, not raised; Ctrl-C is raised."""
    quiet_library_output()  # off a terminal, run.log gets rm_exps' lines, not the libraries' bars
    config, folder = spec.config, RunFolder(spec.run_dir)
    accelerator = fresh_accelerator(config)
    resume_from = resumable_checkpoint(folder, config, accelerator)
    start_attempt(folder, config, accelerator, fresh=resume_from is None)
    run = RunState()
    with run_logging(folder, config, accelerator.is_main_process):
        log.info(
            "run %s: objective %s, model %s, seed %d (full config in %s)",
            spec.name,
            config.objective,
            config.model,
            config.random_seed,
            folder.file("config.json"),
        )
        status, error = attempt(spec.name, lambda: train_and_evaluate(config, folder, accelerator, run, resume_from))
        summary = build_summary(config, run, status, error, accelerator)
        if accelerator.is_main_process:
            record_result(folder, spec.name, config, summary)
        if run.trackers is not None:
            run.trackers.finish()  # after summary.json, so it is uploaded too
    accelerator.wait_for_everyone()
    return summary


def attempt(name: str, steps: Callable[[], None]) -> tuple[str, str | None]:
    """Run the steps; how they ended: `completed`, `diverged` or `failed`, with the error's first line
    (the traceback goes to the log). Ctrl-C is raised."""
    try:
        steps()
        return "completed", None
    except Diverged as e:
        log.warning("run %s diverged: %s", name, e)
        return "diverged", str(e)
    except KeyboardInterrupt:
        log.warning("run %s interrupted", name)
        raise
    except Exception as e:  # recorded as failed; the sweep goes on
        log.error("run %s failed:\n%s", name, traceback.format_exc())
        return "failed", f"{type(e).__name__}: {e}".splitlines()[0]


def record_result(folder: RunFolder, name: str, config: RunConfig, summary: dict[str, Any]) -> None:
    """summary.json; a finished result makes the checkpoints and the result it replaces (--rerun) go."""
    folder.write_summary(summary)
    log.info("run %s %s, score %s = %s", name, summary["status"], config.score_metric_name, summary["score"])
    if summary["status"] in FINISHED:
        remove_checkpoints(folder.path)  # the summary now holds the result; checkpoints are only for resuming
        folder.drop_previous_result()


def train_and_evaluate(
    config: RunConfig, folder: RunFolder, accelerator: Accelerator, run: RunState, resume_from: Path | None
) -> None:
    """The run's steps; each one's product goes to the next, and what must outlive a failure to `run`."""
    check_precision(config, accelerator)
    set_seed(config.random_seed)
    tokenizer = setup_tokenizer(config)
    objective = build_objective(config, tokenizer)
    data = setup_data(config, tokenizer, objective, accelerator, run.counts)
    model = setup_model(config, objective, accelerator)
    evaluators = setup_evaluators(config, tokenizer, objective, data, accelerator, folder.path)
    run.precompute_s = precompute(config, objective, data, evaluators, accelerator)
    trainer = setup_trainer(config, folder, accelerator, objective, model, data, evaluators, run)
    if resume_from is not None:
        resume(trainer, resume_from, folder, accelerator)
    run.trainer = trainer
    trainer.fit()
    if config.save_model:
        save_model(objective, trainer.model, tokenizer, folder, accelerator, config)


def resumable_checkpoint(folder: RunFolder, config: RunConfig, accelerator: Accelerator) -> Path | None:
    """The checkpoint this run continues from: the latest one of a run of the same config whose folder
    holds no finished result (no summary: killed or preempted in process; a `failed` one: e.g. a child
    or SLURM job that died, recorded by its parent). Decided by the main process, the same on every rank."""
    found = None
    if accelerator.is_main_process and (folder.summary() or {}).get("status") not in FINISHED:
        found = latest_checkpoint(folder.path, config.hash())
    return agreed(found)


def start_attempt(folder: RunFolder, config: RunConfig, accelerator: Accelerator, fresh: bool) -> None:
    """The run folder with this attempt's config.json and owner (main process); a fresh (not resumed)
    attempt sets a finished result aside and drops older checkpoints. The peak-memory count restarts."""
    if accelerator.is_main_process:
        folder.create()
        if fresh:
            folder.clear_previous_attempt()
            remove_checkpoints(folder.path)
        folder.write_config(config.flat())
        write_owner(folder.path)
    accelerator.wait_for_everyone()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)


# --- the steps -------------------------------------------------------------------------------


def check_precision(config: RunConfig, accelerator: Accelerator) -> None:
    """Refuse a precision the device cannot honour, and log the one the run trains in."""
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


def setup_tokenizer(config: RunConfig) -> Any:
    """The model's tokenizer, with the task's special tokens (Hamiltonian cycles) added."""
    extra_tokens = ()
    if config.is_ham_cycle_task:
        from rm_exps.data.hamiltonian import SPECIAL_TOKENS

        extra_tokens = SPECIAL_TOKENS
    return load_tokenizer(config.model, extra_tokens=extra_tokens, cache_dir=config.model_cache_dir)


def setup_model(config: RunConfig, objective: Objective, accelerator: Accelerator) -> torch.nn.Module:
    """The objective's trainable module with the memory options (gradient checkpointing, LoRA), and its
    frozen helpers (e.g. a reference model) on the device."""
    model = apply_memory_options(objective.build_model(), config)
    objective.setup(accelerator.device)
    return model


def precompute(
    config: RunConfig, objective: Objective, data: RunData, evaluators: Evaluators, accelerator: Accelerator
) -> float:
    """Frozen quantities (IM-RM reference log-probs, ICRM generator probabilities), computed once for
    every example any loader will serve (the train loader only, for objectives that precompute for
    training only); returns the seconds it took."""
    loaders = [data.train_loader, *data.eval_loaders.values(), *evaluators.own_loaders()]
    if objective.precompute_train_only:
        loaders = [data.train_loader]
    start = time.perf_counter()
    precompute_frozen(config, objective, [loader.dataset for loader in loaders], data.collate, accelerator)
    return time.perf_counter() - start


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


def setup_trainer(
    config: RunConfig,
    folder: RunFolder,
    accelerator: Accelerator,
    objective: Objective,
    model: torch.nn.Module,
    data: RunData,
    evaluators: Evaluators,
    run: RunState,
) -> Trainer:
    """Optimizer and schedule, the model and loaders prepared by accelerate, the pairwise evaluator over
    the prepared evaluation loaders, trackers (kept in `run` to be closed), and the trainer with its
    metrics sink, validation hook and checkpoint hook."""
    optimizer = build_optimizer(config, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, data.train_loader)
    scheduler = build_scheduler(
        config, optimizer, optimizer_steps(len(train_loader), config.gradient_accumulation_steps, config.epochs)
    )
    eval_loaders = {key: accelerator.prepare(loader) for key, loader in data.eval_loaders.items()}
    evaluators.pairwise = PairwiseEvaluator(objective, eval_loaders, data.subsets)
    trackers = run.trackers = Trackers(config, folder.path, active=accelerator.is_main_process)
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
        len(data.train_pairs),
        evaluators=evaluators.in_order(),
        emit=emit,
        history=run.history,
        scheduler=scheduler,
        order_generator=data.order_generator,
    )
    trainer.on_validation = lambda history: _after_validation(config, folder, accelerator, history)
    if config.checkpoint_every_steps:
        trainer.checkpoint = lambda: save_checkpoint(
            accelerator, folder.path, trainer, config.hash(), folder.metrics_lines(), config.checkpoint_keep
        )
    return trainer


def resume(trainer: Trainer, checkpoint: Path, folder: RunFolder, accelerator: Accelerator) -> None:
    """Continue from a mid-run checkpoint: the trainer's state, and metrics.jsonl cut back to it."""
    run_state = load_checkpoint(accelerator, checkpoint, trainer)
    if accelerator.is_main_process:
        folder.truncate_metrics(run_state["metrics_lines"])  # records written after the checkpoint are redone
    log.info(
        "resumed from %s: epoch %d, micro-batch %d, optimizer step %d",
        checkpoint,
        trainer.epoch + 1,
        trainer.batches_done,
        trainer.optimizer_steps,
    )


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
    console = [h for h in log.handlers if getattr(h, CONSOLE_MARK, False)]
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


def _after_validation(config: RunConfig, folder: RunFolder, accelerator: Accelerator, history: History) -> None:
    """eval_metrics.json after every validation; plots every save_every_num_val validations and after
    the last epoch's (always run) validation, so the final curves are drawn exactly once."""
    if not accelerator.is_main_process:
        return
    write_json_atomic(folder.file("eval_metrics.json"), eval_metrics_table(history))
    validations = len(next(iter(history.eval.values()), []))
    final = history.last_epoch == config.epochs - 1
    if config.tracking.metric_plots and (validations % config.tracking.plot_every_num_val == 0 or final):
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
        log.info("saved the final %s to %s", "LoRA adapter" if config.lora.r else "model", folder.file("model"))
        if config.lora.r and config.lora.save_merged:
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
