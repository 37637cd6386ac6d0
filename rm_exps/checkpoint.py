"""Mid-run checkpoints of a run folder, so a run killed at hour 9 (preemption, time limit, OOM
kill) continues from its last checkpoint instead of step 0.

    <run_dir>/checkpoints/step_<optimizer steps>/
        accelerate's save_state: model (DeepSpeed: every rank's shards), optimizer, RNG states per process
        trainer_state_<rank>.pt   rm_exps.train.Trainer.state_dict() of each process
        run_state.json            config hash and the metrics.jsonl length at the checkpoint

Every process writes into `.tmp-step_<n>/`; the main process renames it to `step_<n>/` once all
have finished, so a checkpoint folder without the dot is complete. Only the newest
`checkpoint_keep` are kept.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from rm_exps.outputs import read_json, write_json_atomic

CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)")


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := _NAME.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path, config_hash: str) -> Path | None:
    """The newest complete checkpoint written by a run of this config, if any."""
    for path in reversed(checkpoints(run_dir)):
        state = read_json(path / "run_state.json")
        if state is not None and state.get("config_hash") == config_hash:
            return path
    return None


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(Path(run_dir) / CHECKPOINTS_DIR, ignore_errors=True)


def save_checkpoint(
    accelerator: Any, run_dir: Path, trainer: Any, config_hash: str, metrics_lines: int, keep: int
) -> Path:
    """Checkpoint the run on every process (a collective call); returns the checkpoint folder."""
    import torch

    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / f"step_{trainer.optimizer_steps}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written attempt of a killed process
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(trainer.state_dict(), tmp / f"trainer_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(
            tmp / "run_state.json",
            {
                "config_hash": config_hash,
                "metrics_lines": metrics_lines,
                "epoch": trainer.epoch,
                "batches_done": trainer.batches_done,
                "optimizer_steps": trainer.optimizer_steps,
            },
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path, trainer: Any) -> dict[str, Any]:
    """Restore model, optimizer, RNG states and the trainer's state from `path`; returns run_state.json."""
    import torch

    accelerator.load_state(str(path))
    trainer.load_state_dict(torch.load(path / f"trainer_state_{accelerator.process_index}.pt", weights_only=False))
    return read_json(path / "run_state.json")
