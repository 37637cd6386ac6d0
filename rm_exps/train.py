"""The training loop on accelerate. It knows the objective only through `loss` and the
evaluators only through `evaluate`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rm_exps.batching import num_pairs
from rm_exps.config import RunConfig
from rm_exps.progress import progress

log = logging.getLogger("rm_exps")


class Diverged(RuntimeError):
    """A non-finite training loss: the run stops with status `diverged`."""


def build_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the trainable parameters. Weight decay applies to matrices only:
    biases and norm weights (1-D) never decay, as in transformers' Trainer and nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon
        )
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def optimizer_steps(num_micro_batches: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps of a run: one per accumulation window, the epoch's short last window included."""
    return epochs * math.ceil(num_micro_batches / grad_accum)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """transformers' schedule of the plan over `total_steps` optimizer steps; warm-up from
    warmup_steps, else ceil(warmup_ratio * total_steps) (transformers' rounding)."""
    from transformers import get_scheduler

    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * total_steps)
    return get_scheduler(
        config.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(config.lr_scheduler_kwargs),
    )


def micro_batch_sizes(num_examples: int, batch_size: int, num_batches: int, num_processes: int) -> list[int]:
    """Pairs in each of this process's micro-batches of one epoch. With several processes accelerate
    completes the last batch (even_batches), so every batch is full."""
    if num_processes > 1:
        return [batch_size] * num_batches
    return [batch_size] * (num_batches - 1) + [num_examples - batch_size * (num_batches - 1)]


def loss_scales(sizes: list[int], grad_accum: int) -> list[float]:
    """Per micro-batch factors that make each optimizer step the gradient of the mean loss over all
    pairs of its accumulation window, the epoch's short last window included.

    accelerate (and DeepSpeed) divide every micro-batch loss by `grad_accum`; a micro-batch of n
    pairs in a window of N pairs must weigh n / N, so its loss is multiplied by grad_accum * n / N.
    Windows are those accelerate syncs on: every `grad_accum` micro-batches and at the epoch's end.
    """
    scales = []
    for start in range(0, len(sizes), grad_accum):
        window = sizes[start : start + grad_accum]
        scales += [grad_accum * n / sum(window) for n in window]
    return scales


@dataclass
class History:
    """Every metric value with its epoch, for the summary and eval_metrics.json."""

    train: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    last_epoch: int = -1

    def add(self, kind: str, epoch: int, metrics: dict[str, float]) -> None:
        store = self.train if kind == "train" else self.eval
        for name, value in metrics.items():
            store.setdefault(name, []).append((epoch, float(value)))


@dataclass
class Trainer:
    """Epochs of `accumulate`d micro-batches, validation after every `validate_every` epochs, and the
    state a mid-run checkpoint needs to continue exactly (`state_dict`): counters, the epoch's partial
    metric sums (per process), the history, the schedule, the objective's own state, and the
    epoch-start states of the shuffle generator and of the collator, from which a resumed epoch
    replays the same order and skips the batches already trained."""

    config: RunConfig
    accelerator: Any
    objective: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: Any
    num_train_examples: int
    evaluators: list[Any]
    emit: Callable[[dict[str, Any]], None] = lambda record: None  # metrics.jsonl sink
    on_validation: Callable[[History], None] = lambda history: None
    history: History = field(default_factory=History)
    scheduler: Any = None  # stepped once per optimizer step (not prepared: accelerate would step it per process)
    order_generator: torch.Generator | None = None  # the train loader's shuffle generator
    checkpoint: Callable[[], None] | None = None  # saves a checkpoint of the whole run (see rm_exps.checkpoint)
    train_s: float = 0.0
    eval_s: float = 0.0
    train_tokens: int = 0
    padded_tokens: int = 0
    global_step: int = 0  # micro-batches seen, across epochs (the x-axis of per-batch tracker values)
    optimizer_steps: int = 0
    epoch: int = 0  # the epoch in progress, or the next to start
    batches_done: int = 0  # micro-batches of `epoch` already trained
    _sums: dict[str, torch.Tensor] = field(default_factory=dict)
    _count: float = 0.0
    _grad_norms: list[float] = field(default_factory=list)
    _window_weight: float = 0.0  # summed loss weights of the accumulation window so far (loss_weight objectives)
    _epoch_start_state: dict[str, Any] = field(default_factory=dict)

    def fit(self) -> History:
        cfg = self.config
        if cfg.epochs == 0:  # evaluation only: one validation of the model as loaded, recorded as epoch -1
            self.validate(-1)
            return self.history
        for epoch in range(self.epoch, cfg.epochs):
            self.epoch = epoch
            start = time.perf_counter()
            train_metrics = self.train_epoch(epoch)
            self.train_s += time.perf_counter() - start
            self.history.add("train", epoch, train_metrics)
            self.history.last_epoch = epoch
            self.emit({"kind": "train_epoch", "epoch": epoch, "global_step": self.global_step, **train_metrics})
            if (epoch + 1) % cfg.epoch_log_interval == 0:
                log.info("epoch %d/%d train: %s", epoch + 1, cfg.epochs, _fmt(train_metrics))
            if (epoch + 1) % cfg.validate_every == 0 or epoch == cfg.epochs - 1:
                self.validate(epoch)
            self.epoch, self.batches_done, self._epoch_start_state = epoch + 1, 0, {}
            if self.checkpoint is not None and epoch < cfg.epochs - 1:
                self.checkpoint()
        return self.history

    def validate(self, epoch: int) -> dict[str, float]:
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            if getattr(evaluator, "final_only", False) and epoch != self.config.epochs - 1:
                continue  # expensive evaluators (generation, best-of-N) run at the last validation only
            metrics.update(evaluator.evaluate(self.model, self.accelerator))
        self.eval_s += time.perf_counter() - start
        self.history.add("eval", epoch, metrics)
        self.emit({"kind": "eval", "epoch": epoch, "global_step": self.global_step, **metrics})
        log.info("epoch %d validation (%.1fs): %s", epoch + 1, time.perf_counter() - start, _fmt(metrics))
        self.on_validation(self.history)
        return metrics

    def _begin_epoch(self, sizes: list[int]) -> Any:
        """The loader of this epoch: fresh, or (resumed mid-epoch) the same order as the interrupted
        epoch with its first `batches_done` micro-batches skipped."""
        collate = self.train_loader.collate_fn
        skip = self.batches_done
        state = self._epoch_start_state  # non-empty only when resumed from a checkpoint
        if skip == 0:
            self._sums, self._count, self._grad_norms = {}, 0.0, []
        if state.get("order") is not None:
            self.order_generator.set_state(state["order"])
        if state.get("collate") is not None:
            collate.load_state_dict(state["collate"])
            collate.skip(sizes[:skip])
        self._epoch_start_state = self._data_state()
        return self.accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader

    def _data_state(self) -> dict[str, Any]:
        """The shuffle generator's and the collator's state, from which an epoch's batches follow."""
        collate = self.train_loader.collate_fn
        return {
            "order": self.order_generator.get_state() if self.order_generator is not None else None,
            "collate": collate.state_dict() if hasattr(collate, "state_dict") else None,
        }

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, acc = self.config, self.accelerator
        self.model.train()
        sizes = micro_batch_sizes(self.num_train_examples, cfg.batch_size, len(self.train_loader), acc.num_processes)
        scales = loss_scales(sizes, cfg.gradient_accumulation_steps)
        loader = self._begin_epoch(sizes)
        sums = self._sums
        bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=acc.is_main_process)
        epoch_start, epoch_tokens = time.perf_counter(), 0
        for step, batch in enumerate(bar, start=self.batches_done):
            chunks = batch if isinstance(batch, list) else [batch]  # a list with micro_batch_size
            n = sum(num_pairs(chunk) for chunk in chunks)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this micro-batch's window steps with
            grad_norm = None
            with acc.accumulate(self.model):
                metrics = self._backward(chunks, scales[step], epoch, step)
                if acc.sync_gradients and cfg.max_grad_norm is not None:
                    grad_norm = self._clip_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            stepped = acc.sync_gradients
            if stepped:
                self.optimizer_steps += 1
                if self.scheduler is not None:
                    self.scheduler.step()
                if grad_norm is not None:
                    self._grad_norms.append(grad_norm)
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0) + value.detach().to(acc.device) * n
            self._count += n
            real = sum(int(chunk["token_mask"].sum()) for chunk in chunks)
            self.train_tokens += real
            epoch_tokens += real
            self.padded_tokens += sum(chunk["token_mask"].numel() for chunk in chunks) - real
            self.global_step += 1
            self.batches_done = step + 1
            bar.set_postfix(
                loss=f"{metrics['loss'].item():.4f}",
                tok_s=f"{epoch_tokens / (time.perf_counter() - epoch_start):.0f}",
                **({"acc": f"{metrics['accuracy'].item():.3f}"} if "accuracy" in metrics else {}),
                refresh=False,
            )
            if cfg.train_batch_log_interval > 0 and (step + 1) % cfg.train_batch_log_interval == 0:
                batch_metrics = {f"train {k}": float(v) for k, v in metrics.items()}
                batch_metrics["train lr"] = lr
                if self._grad_norms:
                    batch_metrics["train grad norm"] = self._grad_norms[-1]
                self.emit(
                    {
                        "kind": "train_batch",
                        "epoch": epoch,
                        "step": step,
                        "global_step": self.global_step,
                        **batch_metrics,
                    }
                )
                log.info("epoch %d batch %d/%d: %s", epoch + 1, step + 1, len(self.train_loader), _fmt(batch_metrics))
            every = cfg.checkpoint_every_steps
            if (
                stepped
                and self.checkpoint is not None
                and every
                and self.optimizer_steps % every == 0
                and step + 1 < len(self.train_loader)
            ):  # the epoch's end has its own checkpoint, after validation
                self.checkpoint()
        # Epoch metrics: example-weighted means over all processes.
        names = sorted(sums)
        count = torch.tensor(float(self._count), device=acc.device)
        totals = acc.reduce(torch.stack([sums[k] for k in names] + [count]), reduction="sum")
        out = {f"train {k}": (totals[i] / totals[-1]).item() for i, k in enumerate(names)}
        if self._grad_norms:
            out["train grad norm"] = sum(self._grad_norms) / len(self._grad_norms)
        return out

    def _backward(
        self, chunks: list[dict[str, torch.Tensor]], scale: float, epoch: int, step: int
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of a micro-batch, chunk by chunk, each weighted by its share of the
        micro-batch (its pairs, or its `loss_weight`), so the accumulated gradient is the micro-batch's
        own; returns the micro-batch's metrics, the chunks' combined by the same shares."""
        acc = self.accelerator
        weights = [self.objective.loss_weight(chunk) for chunk in chunks]
        pairs = [num_pairs(chunk) for chunk in chunks]
        shares = [m / sum(pairs) for m in pairs] if weights[0] is None else [float(w / sum(weights)) for w in weights]
        by_weight = weights[0] is not None and self._weights_by_loss_weight()
        metrics: dict[str, torch.Tensor] = {}
        for i, (chunk, weight, share, m) in enumerate(zip(chunks, weights, shares, pairs)):
            with self._sync_held(i < len(chunks) - 1):
                loss, chunk_metrics = self.objective.loss(self.model, chunk)
                self._check_finite(loss, epoch, step)
                if by_weight:  # the window's summed loss now, divided by its total weight at the step
                    acc.backward(loss * weight.to(loss) * self.config.gradient_accumulation_steps)
                    self._window_weight += float(weight)
                else:
                    acc.backward(loss * (scale * m / sum(pairs)))
            for name, value in chunk_metrics.items():
                metrics[name] = metrics.get(name, 0) + value.detach() * share
        if by_weight and acc.sync_gradients:
            self._divide_gradients_by_window_weight()
        return metrics

    @contextlib.contextmanager
    def _sync_held(self, hold: bool) -> Iterator[None]:
        """A chunk before its micro-batch's last one, in the micro-batch that ends a window: its
        gradients accumulate without the all-reduce of processes, and DeepSpeed's engine takes it as
        no accumulation boundary (it steps after the last chunk only)."""
        acc = self.accelerator
        if not (hold and acc.sync_gradients):
            yield
            return
        acc.gradient_state._set_sync_gradients(False)
        try:
            with acc.no_sync(self.model):
                yield
        finally:
            acc.gradient_state._set_sync_gradients(True)

    def _weights_by_loss_weight(self) -> bool:
        """Micro-batches weigh by the objective's `loss_weight` (not pairs) unless DeepSpeed runs:
        its engine steps inside backward, before gradients could be divided by the window's weight,
        so there the pair weighting of `loss_scales` stays (logged once)."""
        if self.accelerator.distributed_type != "DEEPSPEED":
            return True
        if not getattr(self, "_warned_weighting", False):
            self._warned_weighting = True
            log.warning(
                "under DeepSpeed, %s micro-batches are weighted by pairs, not by its loss weight", self.objective.name
            )
        return False

    def _divide_gradients_by_window_weight(self) -> None:
        """grad <- grad * processes / (total weight of the window over every process): with the
        summed losses of the window's micro-batches (averaged over processes by DDP) this is the
        gradient of the window's weighted mean, e.g. its token mean."""
        total = torch.tensor(self._window_weight, device=self.accelerator.device, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        factor = self.accelerator.num_processes / total.item()
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        self._window_weight = 0.0

    def _clip_gradients(self) -> float | None:
        """Clip to max_grad_norm; the global norm before clipping. Under DeepSpeed the engine clips in
        its step (its config's gradient_clipping) and this reads the norm of the step just taken."""
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        return None if norm is None else float(norm)

    def state_dict(self) -> dict[str, Any]:
        """What this process needs, besides model, optimizer and RNG states, to continue exactly."""
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "optimizer_steps": self.optimizer_steps,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "train_tokens": self.train_tokens,
            "padded_tokens": self.padded_tokens,
            "sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "count": self._count,
            "grad_norms": list(self._grad_norms),
            # mid-epoch: the states the epoch started from; between epochs: the next epoch's
            "epoch_start_state": self._epoch_start_state if self.batches_done else self._data_state(),
            "history": dataclasses.asdict(self.history),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "objective": self.objective.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in (
            "epoch",
            "batches_done",
            "global_step",
            "optimizer_steps",
            "train_s",
            "eval_s",
            "train_tokens",
            "padded_tokens",
        ):
            setattr(self, key, state[key])
        device = self.accelerator.device
        self._sums = {k: v.to(device) for k, v in state["sums"].items()}
        self._count, self._grad_norms = state["count"], list(state["grad_norms"])
        self._epoch_start_state = state["epoch_start_state"]
        history = state["history"]
        self.history.train = {k: [tuple(p) for p in v] for k, v in history["train"].items()}
        self.history.eval = {k: [tuple(p) for p in v] for k, v in history["eval"].items()}
        self.history.last_epoch = history["last_epoch"]
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_state_dict(state["objective"])

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        bad = torch.tensor(float(not torch.isfinite(loss.detach()).all()), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise Diverged(f"non-finite training loss at epoch {epoch + 1}, batch {step + 1}")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}" for k, v in metrics.items()
    )
