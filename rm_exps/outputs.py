"""The run folder: its layout, atomic JSON writes, the metrics stream and summary.json.

<outputs_dir>/<experiment_name>[__rep<k>]/
    config.json        the fully resolved run config
    run.log            the run's log (tracebacks of failures included)
    metrics.jsonl      one JSON object per logged step and per evaluation
    eval_metrics.json  {"epochs_with_values": [...], metric: [value per validation]}
    summary.json       written last, atomically; its `status` says how the run ended
    previous/          during a --rerun: the finished result it replaces (deleted when the rerun finishes)
    model/             the final model and tokenizer (save_model)
    best_of_n/         best-of-N samples, scores and selections (bon_policy)
    dpo_pairs/         highest- vs lowest-scored pairs, a DatasetDict (dpo_pairs_num_prompts)
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rm_exps.run import RunState

SUMMARY = "summary.json"
CONFIG = "config.json"
MODEL_DIR = "model"
BEST_OF_N_DIR = "best_of_n"
DPO_PAIRS_DIR = "dpo_pairs"
FINISHED = (
    "completed",
    "diverged",
)  # statuses of a run whose result stands (skipped, not resumed, set aside by --rerun)
PACKAGE_DIR = Path(__file__).resolve().parent
PREVIOUS_DIR = "previous"  # a finished result a --rerun replaces, kept until the new attempt finishes
# What a finished attempt leaves (run.log is appended across attempts and stays).
RESULT_FILES = (
    "summary.json",
    "metrics.jsonl",
    "eval_metrics.json",
    "model",
    "model_merged",
    "best_of_n",
    "dpo_pairs",
    "plots",
    "agentic_items.jsonl",
)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file in `path`'s folder to write, renamed over `path` when the block ends without
    error: readers never see half a file, even after Ctrl-C or a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as strings so the file stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.file(SUMMARY))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.file(SUMMARY), summary)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.file(CONFIG), config)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")

    def metrics_lines(self) -> int:
        """Records in metrics.jsonl so far."""
        path = self.file("metrics.jsonl")
        if not path.exists():
            return 0
        with open(path) as f:
            return sum(1 for _ in f)

    def truncate_metrics(self, lines: int) -> None:
        """Keep the first `lines` records of metrics.jsonl (a resumed run redoes the rest), atomically."""
        path = self.file("metrics.jsonl")
        if not path.exists():
            return
        with open(path) as f:
            kept = "".join(line for _, line in zip(range(lines), f))
        write_text_atomic(path, kept)

    def set_aside_result(self) -> None:
        """Move a finished result (before a `--rerun`) into `previous/` instead of deleting it: it
        stays there until the new attempt finishes (`drop_previous_result`), so an interrupted rerun
        loses nothing."""
        summary = self.summary()
        if summary is None or summary.get("status") not in FINISHED:
            return
        previous = self.file(PREVIOUS_DIR)
        shutil.rmtree(previous, ignore_errors=True)  # older than the result being kept now
        previous.mkdir()
        for name in RESULT_FILES:
            if self.file(name).exists():
                os.replace(self.file(name), previous / name)

    def clear_previous_attempt(self) -> None:
        """A new attempt starts a fresh metrics stream and summary (a finished result is set aside)."""
        self.set_aside_result()
        for name in ("metrics.jsonl", SUMMARY, "eval_metrics.json"):
            self.file(name).unlink(missing_ok=True)

    def drop_previous_result(self) -> None:
        """The new attempt finished: the result it replaces goes."""
        shutil.rmtree(self.file(PREVIOUS_DIR), ignore_errors=True)


def environment(device: str, num_processes: int) -> dict[str, Any]:
    packages = {}
    for name in ("torch", "transformers", "accelerate", "datasets", "deepspeed", "peft"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "rm_exps": dict(code_version()),
        "device": device,
        "num_processes": num_processes,
    }


@functools.cache
def code_version(source: Path = PACKAGE_DIR) -> dict[str, Any]:
    """{"version"} of rm_exps, plus {"git_commit", "git_dirty"} when `source` (the package's own
    folder) is in a git checkout: HEAD, and whether `git status --porcelain` lists anything. Asked
    once per process; without git or outside a checkout the git keys are absent."""
    from rm_exps import __version__

    info: dict[str, Any] = {"version": __version__}
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout

        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or git hung
        return info
    return {**info, "git_commit": commit, "git_dirty": dirty}


def tracked_values(history: dict[str, list[tuple[int, float]]], upto: int | None = None) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "epoch"}} of each metric's last value (up to epoch `upto`)."""
    out = {}
    for name, points in history.items():
        points = [p for p in points if upto is None or p[0] <= upto]
        if points:
            out[name] = {"value": points[-1][1], "epoch": points[-1][0]}
    return out


def score_of(config: Any, train: dict, evals: dict) -> tuple[float | None, int | None]:
    """The run's score and the epoch it comes from, by score_metric_name / is_train_metric /
    score_largest / return_best_score."""
    points = (train if config.is_train_metric else evals).get(config.score_metric_name, [])
    finite = [p for p in points if math.isfinite(p[1])]
    if not finite:
        return None, None
    if not config.return_best_score:
        return points[-1][1], points[-1][0]
    best = (max if config.score_largest else min)(finite, key=lambda p: p[1])
    return best[1], best[0]


def build_summary(config: Any, run: RunState, status: str, error: str | None, accelerator: Any) -> dict[str, Any]:
    """summary.json: the reference keys first, then what rm_exps adds (sample counts, timings,
    throughput, memory, environment, the error). Built from what the run reached, so a failed run
    reports as much as exists."""
    summary = _score_summary(config, run.history, status)
    trainer = run.trainer
    train_s = trainer.train_s if trainer else 0.0
    tokens = trainer.train_tokens if trainer else 0
    padded = trainer.padded_tokens if trainer else 0
    summary.update(
        {
            "config_hash": config.hash(),
            "random_seed": config.random_seed,
            **run.counts,
            "wall_s": round(time.perf_counter() - run.started, 3),
            "train_s": round(train_s, 3),
            "eval_s": round(trainer.eval_s, 3) if trainer else 0.0,
            "precompute_s": round(run.precompute_s, 3),  # frozen reference log-probs, before training
            "train_tokens": tokens,
            "train_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
            "padding_fraction": round(padded / (tokens + padded), 4) if tokens + padded else None,
            "peak_mem_mb": round(peak_memory_mb(accelerator.device), 1),
            "environment": run_environment(config, accelerator),
        }
    )
    if error:
        summary["error"] = error
    return summary


def _score_summary(config: Any, history: Any, status: str) -> dict[str, Any]:
    """The reference's keys: the score by the config's rule, and the last (and best epoch's) tracked values."""
    score, score_epoch = score_of(config, history.train, history.eval)
    summary: dict[str, Any] = {
        "last_epoch": history.last_epoch,
        "score_name": config.score_metric_name,
        "score_largest": config.score_largest,
        "is_train_metric": config.is_train_metric,
        "last_tracked_values": {**tracked_values(history.train), **tracked_values(history.eval)},
    }
    if config.return_best_score and score_epoch is not None:
        summary["best_score_epoch_tracked_values"] = {
            **tracked_values(history.train, score_epoch),
            **tracked_values(history.eval, score_epoch),
        }
        summary["best_score_epoch"] = score_epoch
    summary.update(
        {"status": status, "score": score, "score_epoch": score_epoch, "experiment_name": config.experiment_name}
    )
    return summary


def run_environment(config: Any, accelerator: Any) -> dict[str, Any]:
    """Where the run ran: versions and platform, device and processes, threads, precision, distribution."""
    import torch

    from rm_exps.distributed import zero_stage

    return {
        **environment(str(accelerator.device), accelerator.num_processes),
        "torch_threads": torch.get_num_threads(),
        "precision": config.resolved_precision.name,
        "distributed_type": str(accelerator.distributed_type.value),
        "zero_stage": zero_stage(accelerator),
    }


def peak_memory_mb(device: Any) -> float:
    """Peak GPU memory allocated on a CUDA device (reset at the run's start), else the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def eval_metrics_table(history: Any) -> dict[str, Any]:
    epochs = sorted({e for points in history.eval.values() for e, _ in points})
    return {"epochs_with_values": epochs, **{k: [v for _, v in pts] for k, pts in history.eval.items()}}
