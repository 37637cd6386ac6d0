"""The launchers: how the runs a sweep decided to start are executed. Each takes the run specs of
one wave and returns {run index: summary}; none decides which runs start (rm_exps.sweep does) and
none imports the sweep.

* in this process (`run_in_process`): one run after another, on every rank under
  `accelerate launch run_plan.py`, where the main process decides for all (the lock it holds);
* in child processes (`run_children`): each run's resolved RunSpec goes to
  `<run_dir>/launch_spec.json` and a child runs exactly that spec (`python -m rm_exps.worker SPEC`),
  directly or under `accelerate launch --num_processes N [--config_file F] -m rm_exps.worker SPEC`.
  A run that crashes (segfault, OOM kill, NCCL hang killed by the user) takes down its child only;
  its exit status and the last lines of its output land in its summary.json, and the sweep goes on.
  `num_parallel` children run side by side. With a `gpu_ids_pool`, each child gets its own share of
  the pool in CUDA_VISIBLE_DEVICES and hands it back when it ends (also when it fails); without
  GPUs, each child gets cores // num_parallel threads (two torch processes that both use every core
  slow each other down many times over);
* as SLURM jobs (`submit_slurm`): submitit submits each child command as a job (an array), with the
  plan's `slurm` options; `run_plan.py --status` reads progress back from the run folders.

Every launcher holds a run folder's lock while its run executes (`run_lock`): a run another sweep
holds is skipped, not run twice. No scheduling of our own beyond a queue of GPU groups: accelerate,
torch.distributed and submitit do the rest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rm_exps.config import RunConfig
from rm_exps.distributed import agreed, uses_deepspeed
from rm_exps.outputs import RunFolder, write_json_atomic
from rm_exps.ownership import owned_elsewhere, try_lock
from rm_exps.plan import RunSpec

log = logging.getLogger("rm_exps")

LAUNCH_SPEC = "launch_spec.json"
CHILD_LOG = "child.log"  # the child's stdout and stderr
SLURM_JOB = "slurm_job.json"
STDERR_TAIL_LINES = 30
LAUNCHERS = ("inprocess", "python", "accelerate", "slurm")
SLURM_DEFAULTS: dict[str, Any] = {
    "cluster": None,  # submitit AutoExecutor cluster: None = detect, "slurm", "local" (no scheduler), "debug"
    "partition": None,
    "gpus_per_node": 0,
    "cpus_per_task": 4,
    "mem_gb": 32,
    "timeout_min": 24 * 60,
    "array_parallelism": 32,
    "folder": None,  # submitit's own logs; default <outputs_dir>/.submitit
    "additional_parameters": {},
}


@dataclass
class Execution:
    """The launcher and its settings (the sweep makes them from the plan keys and the command line)."""

    launcher: str = "inprocess"
    num_parallel: int = 1
    gpu_ids_pool: list[int] = field(default_factory=list)
    num_processes: int | None = None  # per run, for the accelerate launcher; default: its GPU share or 1
    accelerate_config: str | None = None
    slurm: dict[str, Any] = field(default_factory=lambda: dict(SLURM_DEFAULTS))
    wait: bool = True  # slurm: wait for the jobs (submit and return when False)

    def errors(self) -> list[str]:
        errors = []
        if self.launcher not in LAUNCHERS:
            errors.append(f"unknown launcher {self.launcher!r}; known: {', '.join(LAUNCHERS)}")
        if self.num_parallel < 1:
            errors.append(f"num_parallel must be >= 1, got {self.num_parallel}")
        if self.gpu_ids_pool and len(self.gpu_ids_pool) < self.num_parallel:
            errors.append(
                f"gpu_ids_pool has {len(self.gpu_ids_pool)} ids for num_parallel {self.num_parallel}: "
                "every parallel run needs at least one GPU"
            )
        if self.num_processes is not None and self.num_processes < 1:
            errors.append(f"--num-processes must be >= 1, got {self.num_processes}")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            errors.append(f"accelerate config file not found: {self.accelerate_config}")
        unknown = set(self.slurm) - set(SLURM_DEFAULTS)
        if unknown:
            from rm_exps.plan import closest

            errors += [f"unknown slurm option '{k}'{closest(k, SLURM_DEFAULTS)}" for k in sorted(unknown)]
        if self.launcher == "slurm":
            try:
                import submitit  # noqa: F401
            except ImportError:
                errors.append("--launcher slurm needs submitit: pip install submitit")
        return errors

    def gpu_groups(self) -> list[list[int]]:
        """The pool split into num_parallel disjoint groups (the remainder goes unused)."""
        if not self.gpu_ids_pool:
            return [[] for _ in range(self.num_parallel)]
        size = len(self.gpu_ids_pool) // self.num_parallel
        return [self.gpu_ids_pool[i * size : (i + 1) * size] for i in range(self.num_parallel)]


# --- the lock of a run folder, and runs in this process ---------------------------------------


def is_main_process() -> bool:
    """False on the non-main ranks of `accelerate launch run_plan.py` (they print nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def run_lock(spec: RunSpec, where: str, every_rank: bool = False) -> Iterator[dict[str, Any] | None]:
    """Holds the run folder's lock for the block and yields None; yields the run's result instead
    when another process (a second sweep of the plan) holds it. With `every_rank` (all ranks run the
    spec), the main process takes the lock and every rank follows its answer."""
    takes_lock = is_main_process() or not every_rank
    lock = try_lock(spec.run_dir) if takes_lock else None
    elsewhere = takes_lock and lock is None
    if every_rank:  # ranks must not decide on their own
        elsewhere = agreed(elsewhere)
    try:
        yield owned_elsewhere(spec.run_dir, spec.name, where) if elsewhere else None
    finally:
        if lock is not None:
            lock.close()


def run_in_process(runs: list[RunSpec], total: int) -> dict[int, dict[str, Any]]:
    """Run the specs one after another in this process. Ctrl-C stops the sweep (no half-written files)."""
    from rm_exps.run import execute_run  # torch and models are imported only when something runs

    summaries: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    for executed, spec in enumerate(runs):
        eta = ""
        if executed:
            per_run = (time.perf_counter() - started) / executed
            eta = f", about {per_run * (len(runs) - executed) / 60:.1f} min left"
        with run_lock(spec, f"[{spec.index}/{total}]", every_rank=True) as elsewhere:
            if elsewhere is not None:
                summaries[spec.index] = elsewhere
                continue
            log.info("[%d/%d] %s: starting%s", spec.index, total, spec.name, eta)
            try:
                summaries[spec.index] = execute_run(spec)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a failure outside the run's own guard (e.g. while writing)
                log.exception("run %s failed", spec.name)
                summaries[spec.index] = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return summaries


# --- the spec a child runs -------------------------------------------------------------------


def fresh_folder(spec: RunSpec) -> RunSpec:
    """The run folder exists and holds no summary, so one found after the child ends is the child's
    (a finished result is set aside in previous/ until the child finishes)."""
    folder = RunFolder(spec.run_dir)
    folder.create()
    folder.set_aside_result()
    folder.file("summary.json").unlink(missing_ok=True)
    return spec


def write_spec(spec: RunSpec) -> Path:
    path = Path(spec.run_dir) / LAUNCH_SPEC
    write_json_atomic(
        path,
        {
            "config": spec.config.flat(),
            "index": spec.index,
            "repetition": spec.repetition,
            "run_dir": str(spec.run_dir),
        },
    )
    return path


def read_spec(path: str | Path) -> RunSpec:
    data = json.loads(Path(path).read_text())
    return RunSpec(RunConfig.model_validate(data["config"]), data["index"], data["repetition"], Path(data["run_dir"]))


def child_command(spec_path: Path, execution: Execution, num_gpus: int) -> list[str]:
    """python -m rm_exps.worker SPEC, or the same under accelerate launch."""
    if execution.launcher == "accelerate" or (execution.launcher == "slurm" and num_gpus > 1):
        processes = execution.num_processes or max(1, num_gpus)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
        if execution.accelerate_config:
            command += ["--config_file", execution.accelerate_config]
        if processes > 1 and not execution.accelerate_config:
            command += ["--multi_gpu"]  # torchrun underneath; on a machine without GPUs, gloo (see child_environment)
        return command + ["-m", "rm_exps.worker", str(spec_path)]
    return [sys.executable, "-m", "rm_exps.worker", str(spec_path)]


def child_environment(gpus: list[int], threads: int | None, deepspeed: bool = False) -> dict[str, str]:
    """The parent's environment, plus the child's GPUs and thread count. Without GPUs, accelerate
    is told to use the CPU, so several processes of one run talk over gloo; a DeepSpeed launch is
    not (accelerate would drop DeepSpeed for plain CPU processes): DeepSpeed brings its CPU
    accelerator and rm_exps.distributed.process_state the gloo group."""
    import torch

    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    elif not torch.cuda.is_available() and not deepspeed:
        env.setdefault("ACCELERATE_USE_CPU", "true")
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --- running children ------------------------------------------------------------------------


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG), so a
    killed sweep leaves no orphan training on; the worker records the interruption in its log."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def run_child(spec: RunSpec, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one child to its end; return the run's summary, completed with the exit status and the
    tail of the child's output when it failed (or died before writing a summary)."""
    folder = RunFolder(spec.run_dir)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    with open(folder.file(CHILD_LOG), "w", buffering=1) as log_file:  # line-buffered: tail -f works
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_terminate_with_parent,
        )
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                log_file.write(line)
                tail.append(line.rstrip("\n"))
            code = process.wait()
        except BaseException:  # Ctrl-C in the parent: stop the child too
            process.kill()
            process.wait()
            raise
    summary = folder.summary()
    if code == 0 and summary is not None:
        return summary
    summary = summary or {
        "status": "failed",
        "experiment_name": spec.config.experiment_name,
        "config_hash": spec.config.hash(),
        "error": f"the run's process exited with status {code} before writing a summary",
    }
    summary.update(
        {
            "status": "failed" if summary.get("status") != "diverged" else "diverged",
            "exit_status": code,
            "stderr_tail": list(tail),
        }
    )
    folder.write_summary(summary)
    return summary


def run_children(runs: list[RunSpec], execution: Execution) -> dict[int, dict[str, Any]]:
    """Run each spec in its own child, num_parallel at a time; {run index: summary}."""
    groups: queue.Queue[list[int]] = queue.Queue()
    for group in execution.gpu_groups():
        groups.put(group)
    # Side-by-side CPU children share the cores; one child at a time (or GPU children) keep torch's default.
    sharing_cores = execution.num_parallel > 1 and not execution.gpu_ids_pool
    threads = max(1, (os.cpu_count() or 1) // execution.num_parallel) if sharing_cores else None
    deepspeed = uses_deepspeed(execution.accelerate_config)
    results: dict[int, dict[str, Any]] = {}
    lock_results = threading.Lock()

    def one(spec: RunSpec) -> None:
        with run_lock(spec, f"[{spec.index}]") as elsewhere:
            if elsewhere is not None:
                with lock_results:
                    results[spec.index] = elsewhere
                return
            one_locked(spec)

    def one_locked(spec: RunSpec) -> None:
        gpus = groups.get()  # blocks until a group is free
        spec = dataclasses.replace(spec, config=spec.config.model_copy(update={"gpu_ids": gpus}))
        try:
            command = child_command(write_spec(fresh_folder(spec)), execution, len(gpus))
            log.info(
                "[%d] %s: started%s (log: %s)",
                spec.index,
                spec.name,
                f" on GPUs {gpus}" if gpus else "",
                RunFolder(spec.run_dir).file(CHILD_LOG),
            )
            summary = run_child(spec, command, child_environment(gpus, threads, deepspeed))
        except Exception as e:  # could not even start the child
            summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            groups.put(gpus)  # hand the GPUs back, whatever happened
        log.info("[%d] %s: %s", spec.index, spec.name, summary.get("status"))
        with lock_results:
            results[spec.index] = summary

    with ThreadPoolExecutor(max_workers=execution.num_parallel) as pool:
        for future in [pool.submit(one, spec) for spec in runs]:
            future.result()
    return results


# --- SLURM through submitit ------------------------------------------------------------------


def submit_slurm(runs: list[RunSpec], execution: Execution, outputs_dir: Path) -> dict[int, Any]:
    """Submit every run as one job of an array; wait for them when execution.wait. {index: summary or None}."""
    import submitit

    from rm_exps.slurm_job import SlurmRun

    options = execution.slurm
    folder = options["folder"] or outputs_dir / ".submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=options["cluster"])
    gpus = int(options["gpus_per_node"] or 0)
    params = {
        "timeout_min": options["timeout_min"],
        "cpus_per_task": options["cpus_per_task"],
        "mem_gb": options["mem_gb"],
        "nodes": 1,
        "tasks_per_node": 1,
    }
    if executor.cluster == "slurm":
        params.update(
            slurm_partition=options["partition"],
            slurm_array_parallelism=options["array_parallelism"],
            slurm_additional_parameters=options["additional_parameters"],
        )
        if gpus:
            params["gpus_per_node"] = gpus
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs = {}
    with executor.batch():
        for spec in runs:
            command = child_command(write_spec(fresh_folder(spec)), execution, gpus)
            jobs[spec.index] = (spec, executor.submit(SlurmRun(), command, str(spec.run_dir)))
    for spec, job in jobs.values():
        write_json_atomic(
            Path(spec.run_dir) / SLURM_JOB,
            {"job_id": job.job_id, "cluster": executor.cluster, "submitit_folder": str(folder)},
        )
        log.info("[%d] %s: submitted as job %s", spec.index, spec.name, job.job_id)
    if not execution.wait:
        return {index: None for index in jobs}
    results = {}
    for index, (spec, job) in jobs.items():
        try:
            job.result()
        except Exception as e:  # the job itself failed (killed, timed out, node failure)
            log.error("[%d] %s: job %s failed: %s", spec.index, spec.name, job.job_id, str(e).splitlines()[-1:])
        results[index] = RunFolder(spec.run_dir).summary() or {
            "status": "failed",
            "error": f"job {job.job_id} ended without a summary (see {folder})",
        }
    return results
