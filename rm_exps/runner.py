"""Executes the runs of a plan: skips finished ones, isolates failures, prints the final table.

A run is finished when its folder holds a summary with status `completed` (or `diverged`, a
result too) and a config.json that records this run's config, compared field by field
(RunConfig.differences_from_recorded: presentation fields aside, every recorded field must resolve
to the same value, and a field added since must be at its default; `config_hash` is not used).
Any other state (no summary, `failed`, an interrupted run) runs again; a finished run of another
config is a plan error (preflight) unless --rerun. Runs execute in this process one after another
(on every rank under `accelerate launch`, which agree on what to skip), or in child processes /
SLURM jobs (rm_exps.launch).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rm_exps.config import RunConfig
from rm_exps.distributed import agreed
from rm_exps.launch import Execution, run_children, submit_slurm
from rm_exps.outputs import CONFIG, FINISHED, RunFolder, read_json
from rm_exps.ownership import owned_elsewhere, try_lock
from rm_exps.plan import PlanError, RunSpec

log = logging.getLogger("rm_exps")


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # completed | diverged | failed | skipped (+ the skipped run's own status) | submitted (slurm)
    summary: dict[str, Any] | None


def stale_reasons(spec: RunSpec) -> list[str]:
    """Why the run folder's results are not this spec's ('field: recorded -> now'); empty when its
    config.json records the same config. A folder without a readable config.json is stale."""
    recorded = read_json(spec.run_dir / CONFIG)
    if not isinstance(recorded, dict):
        return ["unknown (no config.json)"]
    return config_differences(recorded, spec.config)


def finished_summary(spec: RunSpec) -> dict[str, Any] | None:
    summary = RunFolder(spec.run_dir).summary()
    if summary and summary.get("status") in FINISHED and not stale_reasons(spec):
        return summary
    return None


def config_differences(old: dict[str, Any], new: RunConfig) -> list[str]:
    """'field: old -> new' for each difference that makes a run recorded with config.json `old` stale."""
    return new.differences_from_recorded(old)


def preflight(runs: list[RunSpec], rerun: bool) -> None:
    """A finished run whose config changed is an error (unless --rerun): its folder would mix
    results of two different configs."""
    errors = []
    for spec in runs:
        summary = RunFolder(spec.run_dir).summary()
        if rerun or not summary or summary.get("status") not in FINISHED:
            continue
        reasons = stale_reasons(spec)
        if reasons:
            diff = "; ".join(reasons[:8]) + (f"; and {len(reasons) - 8} more" if len(reasons) > 8 else "")
            errors.append(
                f"run {spec.index} ({spec.name}): {spec.run_dir} holds a finished run with another config "
                f"({diff}); pass --rerun to replace it or change experiment_name/outputs_dir"
            )
    if errors:
        raise PlanError(errors)


def is_main_process() -> bool:
    """False on the non-main ranks of `accelerate launch run_plan.py` (they print nothing)."""
    return int(os.environ.get("RANK", "0")) == 0


def finished_runs(runs: list[RunSpec], rerun: bool) -> dict[int, dict[str, Any]]:
    """{run index: summary} of the runs that are already finished with the same config."""
    if rerun:
        return {}
    return {spec.index: summary for spec in runs if (summary := finished_summary(spec)) is not None}


def run_all(
    runs: list[RunSpec], rerun: bool = False, execution: Execution | None = None, outputs_dir: Path | None = None
) -> list[RunResult]:
    """Run every spec that is not finished: in this process (one after another, under `accelerate
    launch` on every rank), or in child processes / SLURM jobs as `execution` says. Chained runs
    ('run:<name>') go in waves, producers first; a run whose producer did not complete is not
    started and is recorded as failed."""
    execution = execution or Execution()
    in_process = execution.launcher == "inprocess"
    done = finished_runs(runs, rerun)
    if in_process:  # ranks must not decide on their own: a summary written between two reads would split them
        done = agreed(done)
    for spec in runs:
        if spec.index in done:
            log.info("[%d/%d] %s: already %s, skipped", spec.index, len(runs), spec.name, done[spec.index]["status"])
    outcome = {spec.run_dir: done[spec.index]["status"] for spec in runs if spec.index in done}
    summaries: dict[int, dict[str, Any]] = {}
    for wave in dependency_waves([spec for spec in runs if spec.index not in done]):
        ready = []
        for spec in wave:
            missing = [d for d in spec.dependencies if outcome.get(d) != "completed"]
            if missing:  # a run it reads did not complete: its output is missing or stale
                error = (
                    "needs "
                    + ", ".join(f"run '{d.name}' ({outcome.get(d, 'not run')})" for d in missing)
                    + ", which did not complete"
                )
                log.error("[%d/%d] %s: not started: %s", spec.index, len(runs), spec.name, error)
                summaries[spec.index] = {"status": "failed", "error": error}
                outcome[spec.run_dir] = "failed"
            else:
                ready.append(spec)
        if in_process:
            wave_summaries = _run_in_process(ready, len(runs))
        elif execution.launcher == "slurm":
            wave_summaries = submit_slurm(ready, execution, outputs_dir or Path(runs[0].config.outputs_dir))
        else:
            wave_summaries = run_children(ready, execution)
        for spec in ready:
            summary = wave_summaries.get(spec.index)
            outcome[spec.run_dir] = summary["status"] if summary else "submitted"
        summaries.update({k: v for k, v in wave_summaries.items() if v is not None})
    results = []
    for spec in runs:
        if spec.index in done:
            results.append(RunResult(spec, "skipped", done[spec.index]))
        else:
            summary = summaries.get(spec.index)
            results.append(RunResult(spec, summary["status"] if summary else "submitted", summary))
    return results


def dependency_waves(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped so that every run comes after the runs it reads (finished ones need no wait)."""
    level: dict[Path, int] = {}
    for spec in runs:  # producers come first in the plan's order (plan.link_runs)
        level[spec.run_dir] = 1 + max((level.get(d, -1) for d in spec.dependencies), default=-1)
    waves: list[list[RunSpec]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for spec in runs:
        waves[level[spec.run_dir]].append(spec)
    return waves


def _run_in_process(runs: list[RunSpec], total: int) -> dict[int, dict[str, Any]]:
    """Run the specs one after another in this process. Ctrl-C stops the sweep (no half-written files)."""
    from rm_exps.run import execute_run  # torch and models are imported only when something runs

    summaries: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    for executed, spec in enumerate(runs):
        eta = ""
        if executed:
            per_run = (time.perf_counter() - started) / executed
            eta = f", about {per_run * (len(runs) - executed) / 60:.1f} min left"
        lock = try_lock(spec.run_dir) if is_main_process() else None
        if agreed(is_main_process() and lock is None):  # another sweep runs it now
            summaries[spec.index] = owned_elsewhere(spec.run_dir, spec.name, f"[{spec.index}/{total}]")
            continue
        log.info("[%d/%d] %s: starting%s", spec.index, total, spec.name, eta)
        try:
            summary = execute_run(spec)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a failure outside the run's own guard (e.g. while writing)
            log.exception("run %s failed", spec.name)
            summary = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        finally:
            if lock is not None:
                lock.close()
        summaries[spec.index] = summary
    return summaries


def _metric(summary: dict[str, Any] | None, name: str) -> str:
    from rm_exps.report import metric_values

    value = metric_values(summary).get(name)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def results_table(results: list[RunResult]) -> Any:
    """The end-of-plan table: the config fields that vary across runs, status, score, accuracies."""
    from rich.table import Table

    from rm_exps.report import varying_fields

    metrics = {"train acc": "eval train accuracy", "test acc": "eval test accuracy"}
    # Optional columns, shown when some run reports them.
    for column, name in (
        ("test gen acc", "eval test ham cycle gen accuracy"),
        ("test paraphrased acc", "eval test paraphrased responses accuracy"),
    ):
        if any(name in ((r.summary or {}).get("last_tracked_values") or {}) for r in results):
            metrics[column] = name
    configs = [r.spec.config.model_dump() for r in results]
    fields = varying_fields([{"config": c} for c in configs])
    table = Table(title="runs")
    for column in ("#", "run", *fields, "status", "score", *metrics, "wall s"):
        table.add_column(column, justify="right" if column in ("#", "score", "wall s", *metrics) else "left")
    for r, config in zip(results, configs):
        summary = r.summary or {}
        status = r.status if r.status != "skipped" else f"skipped ({summary.get('status')})"
        score = summary.get("score")
        table.add_row(
            str(r.spec.index),
            r.spec.name,
            *[str(config[f]) for f in fields],
            status,
            f"{score:.4f}" if isinstance(score, (int, float)) else "-",
            *[_metric(summary, name) for name in metrics.values()],
            f"{summary.get('wall_s', 0):.0f}" if r.status != "skipped" else "-",
        )
    return table


def print_results(results: list[RunResult]) -> None:
    from rich.console import Console

    # Off a terminal (a log file) rich would assume 80 columns and squeeze every cell into a few
    # characters; there the table gets its natural width instead (a table does not expand to fill).
    Console(width=None if sys.stdout.isatty() else 10_000).print(results_table(results))
    for r in results:
        if r.status == "failed":
            print(
                f"run {r.spec.index} ({r.spec.name}) failed: {(r.summary or {}).get('error')} "
                f"(traceback in {r.spec.run_dir / 'run.log'})"
            )
