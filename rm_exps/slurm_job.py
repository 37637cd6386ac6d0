"""The callable a SLURM job runs, requeued on preemption or timeout.

submitit calls `checkpoint` when SLURM signals the job (preemption, or the time limit close); a
Checkpointable's default answer resubmits the same call, so the job is requeued with the same
command. The requeued run finds its run folder's latest checkpoint (`checkpoint_every_steps`) and
resumes from it (rm_exps.run.resumable_checkpoint); without checkpoints it starts again.
"""

from __future__ import annotations

import submitit

from rm_exps.launch import run_command


class SlurmRun(submitit.helpers.Checkpointable):
    """`SlurmRun()(command, run_dir)`: run one child command of a run folder; requeued by submitit."""

    def __call__(self, command: list[str], run_dir: str) -> int:
        return run_command(command, run_dir)
