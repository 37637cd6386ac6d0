"""The callable a SLURM job runs, requeued on preemption or timeout.

submitit calls `checkpoint` when SLURM signals the job (preemption, or the time limit close); a
Checkpointable's default answer resubmits the same call, so the job is requeued with the same
command. The requeued run finds its run folder's latest checkpoint (`checkpoint_every_steps`) and
resumes from it (rm_exps.run.resumable_checkpoint); without checkpoints it starts again.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from rm_exps.launch import LAUNCH_SPEC, read_spec, run_child


class SlurmRun(submitit.helpers.Checkpointable):
    """`SlurmRun()(command, run_dir)`: run one child command of a run folder, its output to the run
    folder (rm_exps.launch.run_child); requeued by submitit."""

    def __call__(self, command: list[str], run_dir: str) -> int:
        summary = run_child(read_spec(Path(run_dir) / LAUNCH_SPEC), command, dict(os.environ))
        return 0 if summary.get("status") != "failed" else 1
