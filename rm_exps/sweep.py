"""The sweep: one plan from its file to the end-of-plan table. run_plan.py parses the command line
and hands a Request over; this module decides everything about the plan's runs, then calls one of
the launchers (rm_exps.launch), which runs what it is given and never calls back.

    load and expand the plan (plan.load_plan, build_runs) and its launching keys (execution_from_plan)
    --report, --status: read the run folders, run nothing
    otherwise preflight (finished runs whose config changed); --dry-run lists the runs
    skip the finished runs, start the others in waves (producers first) with the chosen launcher
    the end-of-plan table

A run is finished when its folder holds a summary with status `completed` (or `diverged`, a
result too) and a config.json that records this run's config, compared field by field
(RunConfig.differences_from_recorded: presentation fields aside, every recorded field must resolve
to the same value, and a field added since must be at its default; `config_hash` is not used).
Any other state (no summary, `failed`, an interrupted run) runs again; a finished run of another
config is a plan error (preflight) unless --rerun. Under `accelerate launch run_plan.py` every rank
runs the sweep and the main process decides for all of them what is skipped.

Nothing here imports torch: only a launcher that executes a run does, so --dry-run, --status and
--report stay quick.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rm_exps.checkpoint import checkpoints
from rm_exps.distributed import agreed, shutdown
from rm_exps.launch import (
    SLURM_DEFAULTS,
    SLURM_JOB,
    Execution,
    is_main_process,
    run_children,
    run_in_process,
    submit_slurm,
)
from rm_exps.outputs import CONFIG, FINISHED, RunFolder, read_json
from rm_exps.ownership import describe, owner, owner_alive
from rm_exps.plan import PlanError, RunSpec, build_runs, load_plan, parse_overrides
from rm_exps.report import DEFAULT_METRICS, accuracy_interval_of, metric_values, plan_runs, report, varying_fields

log = logging.getLogger("rm_exps")


@dataclass(frozen=True)
class ReportOptions:
    """--report's table: metric name globs, an optional (row, column, metric) pivot, format, plot file."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    pivot: tuple[str, str, str] | None = None
    format: str = "table"
    plot: str | None = None
    compare: tuple[str, str, str] | None = None  # (field, a, b): paired per-repetition differences a - b
    compare_metric: str = "accuracy"


@dataclass(frozen=True)
class Request:
    """What the command line asks of a plan."""

    plan: str
    action: str = "run"  # run | dry-run | status | report
    overrides: tuple[str, ...] = ()  # "key=value", applied to every run before options and templating
    rerun: bool = False  # run again the runs that already finished
    launch: dict[str, Any] = field(default_factory=dict)  # Execution fields from the command line; None: the plan's
    report: ReportOptions = ReportOptions()


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # completed | diverged | failed | skipped (+ the skipped run's own status) | submitted (slurm)
    summary: dict[str, Any] | None


def run(request: Request) -> int:
    """Carry out the request. Exit status: 0 when every run completed (or was already finished),
    1 when a run failed, 2 when the plan is invalid (nothing is run or written), 130 on Ctrl-C."""
    try:
        runs, execution = load(request)
    except PlanError as e:
        print(f"invalid plan {request.plan}: {len(e.errors)} problem(s)", file=sys.stderr)
        for msg in e.errors:
            print(f"  - {msg}", file=sys.stderr)
        return 2
    if request.action == "report":
        return print_report(runs, request.report)
    if request.action == "status":
        print_status(runs)
        return 0
    if request.action == "dry-run":
        print_runs(runs)
        return 0
    return execute(runs, execution, request.rerun)


def load(request: Request) -> tuple[list[RunSpec], Execution]:
    """The plan's runs and launching settings, every problem in one PlanError; a request that may
    run something also gets the preflight."""
    overrides = parse_overrides(list(request.overrides))
    plan = load_plan(request.plan)
    runs = build_runs(plan, overrides)
    execution = execution_from_plan(plan, **request.launch)
    if execution.errors():
        raise PlanError(execution.errors())
    if request.action in ("run", "dry-run"):
        preflight(runs, request.rerun)
    return runs, execution


def execution_from_plan(plan: dict[str, Any], **cli: Any) -> Execution:
    """The choice of launcher: plan keys (multiprocess, num_parallel, gpu_ids_pool, slurm), then the
    command-line values that are set; parallel runs and GPU pinning need a child per run."""
    parallel = plan.get("num_parallel", 1) if plan.get("multiprocess") or cli.get("num_parallel") else 1
    execution = Execution(
        num_parallel=parallel,
        gpu_ids_pool=list(plan.get("gpu_ids_pool") or []),
        slurm={**SLURM_DEFAULTS, **(plan.get("slurm") or {})},
    )
    for key, value in cli.items():
        if value is None:
            continue
        if key == "slurm":
            execution.slurm.update(value)
        else:
            setattr(execution, key, value)
    if execution.launcher == "inprocess" and (execution.num_parallel > 1 or execution.gpu_ids_pool):
        execution.launcher = "python"
    return execution


# --- which runs are finished -----------------------------------------------------------------


def stale_reasons(spec: RunSpec) -> list[str]:
    """Why the run folder's results are not this spec's ('field: recorded -> now'); empty when its
    config.json records the same config. A folder without a readable config.json is stale."""
    recorded = read_json(spec.run_dir / CONFIG)
    if not isinstance(recorded, dict):
        return ["unknown (no config.json)"]
    return spec.config.differences_from_recorded(recorded)


def finished_summary(spec: RunSpec) -> dict[str, Any] | None:
    summary = RunFolder(spec.run_dir).summary()
    if summary and summary.get("status") in FINISHED and not stale_reasons(spec):
        return summary
    return None


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


def finished_runs(runs: list[RunSpec], rerun: bool) -> dict[int, dict[str, Any]]:
    """{run index: summary} of the runs that are already finished with the same config."""
    if rerun:
        return {}
    return {spec.index: summary for spec in runs if (summary := finished_summary(spec)) is not None}


# --- running ---------------------------------------------------------------------------------


def execute(runs: list[RunSpec], execution: Execution, rerun: bool) -> int:
    """Run the plan, print the end-of-plan table (main process); the exit status of `run`."""
    if not is_main_process():  # accelerate launch run_plan.py: the other ranks stay quiet
        log.setLevel(logging.WARNING)
    try:
        results = run_all(runs, rerun=rerun, execution=execution)
    except KeyboardInterrupt:
        print("interrupted; finished runs keep their summaries, the current run left none", file=sys.stderr)
        return 130
    finally:
        shutdown()
    if is_main_process():
        print_results(results)
    return 1 if any(r.status == "failed" for r in results) else 0


def run_all(
    runs: list[RunSpec], rerun: bool = False, execution: Execution | None = None, outputs_dir: Path | None = None
) -> list[RunResult]:
    """Run every spec that is not finished: in this process (one after another, under `accelerate
    launch` on every rank), or in child processes / SLURM jobs as `execution` says. Chained runs
    ('run:<name>') go in waves, producers first; a run whose producer did not complete is not
    started and is recorded as failed."""
    execution = execution or Execution()
    done = finished_runs(runs, rerun)
    if execution.launcher == "inprocess":  # every rank runs: a summary written between two reads would split them
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
        wave_summaries = launch_wave(ready, execution, len(runs), outputs_dir or Path(runs[0].config.outputs_dir))
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


def launch_wave(runs: list[RunSpec], execution: Execution, total: int, outputs_dir: Path) -> dict[int, Any]:
    """One wave's runs through the chosen launcher: {run index: summary, or None for a SLURM job
    submitted and not waited for}."""
    if execution.launcher == "inprocess":
        return run_in_process(runs, total)
    if execution.launcher == "slurm":
        return submit_slurm(runs, execution, outputs_dir)
    return run_children(runs, execution)


def dependency_waves(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped so that every run comes after the runs it reads (finished ones need no wait)."""
    level: dict[Path, int] = {}
    for spec in runs:  # producers come first in the plan's order (plan.link_runs)
        level[spec.run_dir] = 1 + max((level.get(d, -1) for d in spec.dependencies), default=-1)
    waves: list[list[RunSpec]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for spec in runs:
        waves[level[spec.run_dir]].append(spec)
    return waves


# --- what the sweep prints -------------------------------------------------------------------


def print_runs(runs: list[RunSpec]) -> None:
    """--dry-run: each run's folder, objective, model and seed."""
    for spec in runs:
        cfg = spec.config
        print(f"{spec.index:>3}  {spec.run_dir}  objective={cfg.objective} model={cfg.model} seed={cfg.random_seed}")
    print(f"{len(runs)} run(s)")


def print_report(runs: list[RunSpec], options: ReportOptions) -> int:
    """--report: the plan's results table (missing runs included); 2 when the table cannot be made."""
    try:
        print(
            report(
                plan_runs(runs),
                options.metrics,
                options.pivot,
                options.format,
                options.plot,
                options.compare,
                options.compare_metric,
            ),
            end="",
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_status(spec: RunSpec) -> tuple[str, str]:
    """(state, detail) from the run folder alone: completed/diverged/failed from summary.json (a
    summary next to a config.json of another config, or a finished one without config.json, counts
    as stale: the sweep would not reuse it), running once the run wrote its config.json, pending
    when a job was submitted but has not started, else not started; `interrupted` when the owner
    process the run recorded (same host) is gone."""
    folder = RunFolder(spec.run_dir)
    summary = folder.summary()
    job = read_json(folder.file(SLURM_JOB)) or {}
    detail = f"job {job['job_id']}" if job.get("job_id") else ""
    if summary is not None:
        finished = summary.get("status") in FINISHED
        if (finished or folder.file(CONFIG).exists()) and (reasons := stale_reasons(spec)):
            return "stale", f"{'finished' if finished else summary.get('status')} with another config: " + "; ".join(
                reasons[:3]
            ) + (" ..." if len(reasons) > 3 else "")
        return str(summary.get("status")), summary.get("error", "") or detail
    if folder.file(CONFIG).exists():
        record = owner(spec.run_dir)
        alive = owner_alive(record) if record else None
        if alive is False:  # its process is gone: killed, preempted, or the machine restarted
            saved = checkpoints(spec.run_dir)
            resume = f"; resumes from {saved[-1].name} when run again" if saved else "; starts again when run again"
            return "interrupted", f"{describe(record)} is gone{resume}"
        return "running", f"{describe(record)}" if record else detail
    if job:
        return "pending", detail
    return "not started", ""


def print_status(runs: list[RunSpec]) -> None:
    """--status: each run's state, then the count of each state."""
    states: Counter[str] = Counter()
    for spec in runs:
        state, detail = run_status(spec)
        states[state] += 1
        print(f"{spec.index:>3}  {state:<11}  {spec.name}" + (f"  ({detail})" if detail else ""))
    print(", ".join(f"{n} {state}" for state, n in states.items()))


def _metric(summary: dict[str, Any] | None, name: str) -> str:
    """A metric's value; an accuracy over a known number of pairs with its 95% Wilson interval."""
    value = metric_values(summary).get(name)
    if not isinstance(value, (int, float)):
        return "-"
    interval = accuracy_interval_of(summary, name, value)
    return f"{value:.4f}" + (f" [{interval.low:.2f}, {interval.high:.2f}]" if interval else "")


def results_table(results: list[RunResult]) -> Any:
    """The end-of-plan table: the config fields that vary across runs, status, score, accuracies."""
    from rich.table import Table

    metrics = {"train acc": "eval train accuracy", "test acc": "eval test accuracy"}
    # Optional columns, shown when some run reports them.
    for column, name in (
        ("test gen acc", "eval test ham cycle gen accuracy"),
        ("test paraphrased acc", "eval test paraphrased responses accuracy"),
    ):
        if any(name in ((r.summary or {}).get("last_tracked_values") or {}) for r in results):
            metrics[column] = name
    configs = [r.spec.config.flat() for r in results]
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
