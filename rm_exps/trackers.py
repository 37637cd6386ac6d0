"""Experiment trackers: Weights & Biases and TensorBoard, only when a run asks for them.

Neither package is imported unless its flag is set, and `tracker_errors` finds a missing
package or a missing W&B login while the plan is validated, before any training starts.
Trackers receive the same records as metrics.jsonl (`kind`: train_batch | train_epoch | eval).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any

WANDB_PIN = "wandb==0.31.0"
TENSORBOARD_PIN = "tensorboard==2.21.0"


def _wandb_login_found() -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def tracker_errors(use_wandb: bool, use_tensorboard: bool) -> list[str]:
    """Problems that would stop a tracker, found without importing it."""
    errors = []
    if use_wandb:
        if importlib.util.find_spec("wandb") is None:
            errors.append(f"use_wandb needs the wandb package: pip install {WANDB_PIN}")
        elif not _wandb_login_found():
            errors.append("use_wandb: no W&B login found; run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline")
    if use_tensorboard and importlib.util.find_spec("tensorboard") is None:
        errors.append(f"use_tensorboard needs the tensorboard package: pip install {TENSORBOARD_PIN}")
    return errors


class Trackers:
    """Fan-out of a run's metric records to the trackers its config enables (main process only)."""

    def __init__(self, config: Any, folder: Path, active: bool):
        self.config, self.folder = config, Path(folder)
        self.wandb_run = None
        self.tensorboard = None
        if not active:
            return
        if config.tracking.wandb:
            import wandb

            self.wandb_run = wandb.init(
                project=config.tracking.wandb_project,
                entity=config.tracking.wandb_entity,
                name=config.experiment_name,
                config=config.flat(),
                dir=str(self.folder),
                id=config.tracking.wandb_resume_id or None,
                resume="allow" if config.tracking.wandb_resume_id else None,
                reinit="finish_previous",
            )
        if config.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def watch(self, model: Any) -> None:
        if self.wandb_run is not None and self.config.tracking.wandb_track_model:
            self.wandb_run.watch(model, log=self.config.tracking.wandb_track_model)

    def log(self, record: dict[str, Any]) -> None:
        metrics = {
            k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("epoch", "step", "global_step")
        }
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, "epoch": record["epoch"]}, step=record["global_step"])
        if self.tensorboard is not None:
            # Per-batch values against the micro-batch count, epoch values against the epoch (as the reference).
            step = record["global_step"] if record["kind"] == "train_batch" else record["epoch"]
            prefix = "batch/" if record["kind"] == "train_batch" else ""
            for name, value in metrics.items():
                self.tensorboard.add_scalar(prefix + name, value, global_step=step)

    def finish(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            excluded = self.config.tracking.wandb_exclude_files
            for path in sorted(self.folder.rglob("*")):
                relative = str(path.relative_to(self.folder))
                if (
                    path.is_file()
                    and not relative.startswith("wandb")
                    and not any(fnmatch.fnmatch(relative, pattern) for pattern in excluded)
                ):
                    self.wandb_run.save(str(path), base_path=str(self.folder), policy="now")
            self.wandb_run.finish()
