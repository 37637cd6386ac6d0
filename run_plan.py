"""Expand and execute an experiment plan.

    python run_plan.py --plan experiment_plans/quickstart.json
    python run_plan.py --plan PLAN --dry-run                 # list the runs and their folders
    python run_plan.py --plan PLAN --set lr=1e-5 --set epochs=2   # override a field in every run
    python run_plan.py --plan PLAN --lr 1e-5                 # the reference's override form
    python run_plan.py --plan PLAN --report [--pivot objective dataset accuracy]  # results table
    accelerate launch --num_processes 4 run_plan.py --plan PLAN   # every run on 4 processes
    python run_plan.py --plan PLAN --launcher accelerate --num-processes 4 [--accelerate-config FILE]
    python run_plan.py --plan PLAN --num-parallel 2 --gpu-ids 0,1,2,3   # 2 runs at a time, 2 GPUs each
    python run_plan.py --plan PLAN --launcher slurm --slurm-partition gpu --slurm-gpus 4 [--no-wait]
    python run_plan.py --plan PLAN --status                  # pending / running / completed / failed

Exit status: 0 when every run completed (or was already finished), 1 when a run failed,
2 when the plan is invalid (nothing is run or written), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rm_exps.launch import LAUNCHERS, execution_from_plan
from rm_exps.plan import PlanError, build_runs, load_plan, parse_overrides

SLURM_KEYS = {
    "partition": "partition",
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem-gb": "mem_gb",
    "time-min": "timeout_min",
    "cluster": "cluster",
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", "--plan_config_path", dest="plan", required=True, help="JSON plan file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field in every run (before options and templating); repeatable",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate, list the runs and their folders, run nothing")
    parser.add_argument("--rerun", action="store_true", help="run again runs that already finished")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the plan's results table (finished, failed and missing runs) and exit",
    )
    parser.add_argument("--status", action="store_true", help="show each run's state from its folder and exit")
    from rm_exps.report import add_report_options

    add_report_options(parser)
    launch = parser.add_argument_group("launching (plan keys multiprocess, num_parallel, gpu_ids_pool, slurm)")
    launch.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="inprocess (default): runs one after another in this process; python / accelerate: "
        "each run in its own child process (a crash stays in its run); slurm: one job per run",
    )
    launch.add_argument("--num-processes", type=int, help="accelerate launcher: processes per run")
    launch.add_argument("--accelerate-config", help="accelerate launcher: its --config_file (e.g. DeepSpeed ZeRO-3)")
    launch.add_argument("--num-parallel", type=int, help="runs at a time (overrides the plan's num_parallel)")
    launch.add_argument("--gpu-ids", help="comma-separated GPU ids shared out among parallel runs (gpu_ids_pool)")
    launch.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    for option, kind in (
        ("partition", str),
        ("gpus", int),
        ("cpus", int),
        ("mem-gb", int),
        ("time-min", int),
        ("cluster", str),
    ):
        launch.add_argument(f"--slurm-{option}", type=kind, help=f"slurm: {option} (plan: slurm.{SLURM_KEYS[option]})")
    args, unknown = parser.parse_known_args(argv)
    # The reference's form: every other `--key value` (or `--key=value`) pair is an override.
    flat = [part for token in unknown for part in (token.split("=", 1) if token.startswith("--") else [token])]
    pairs = []
    if len(flat) % 2 or any(not k.startswith("--") for k in flat[::2]):
        parser.error(f"overrides must come as '--key value' pairs; got {' '.join(unknown)}")
    pairs = [f"{k[2:]}={v}" for k, v in zip(flat[::2], flat[1::2])]
    return args, parse_overrides(pairs + args.set)


def cli_execution(args: argparse.Namespace) -> dict:
    """The launching options given on the command line (None: take the plan's)."""
    slurm = {SLURM_KEYS[o]: v for o in SLURM_KEYS if (v := getattr(args, f"slurm_{o.replace('-', '_')}")) is not None}
    gpu_ids = [int(i) for i in args.gpu_ids.split(",") if i.strip()] if args.gpu_ids else None
    return {
        "launcher": args.launcher,
        "num_processes": args.num_processes,
        "accelerate_config": args.accelerate_config,
        "num_parallel": args.num_parallel,
        "gpu_ids_pool": gpu_ids,
        "slurm": slurm or None,
        "wait": False if args.no_wait else None,
    }


def print_status(runs: list) -> None:
    from collections import Counter

    from rm_exps.launch import run_status

    states = Counter()
    for spec in runs:
        state, detail = run_status(spec)
        states[state] += 1
        print(f"{spec.index:>3}  {state:<11}  {spec.name}" + (f"  ({detail})" if detail else ""))
    print(", ".join(f"{n} {state}" for state, n in states.items()))


def main(argv: list[str] | None = None) -> int:
    from rm_exps.run import console_handler

    logger = logging.getLogger("rm_exps")
    if not any(getattr(h, "rm_exps_console", False) for h in logger.handlers):
        logger.addHandler(console_handler())
    logger.setLevel(logging.INFO)
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        plan = load_plan(args.plan)
        runs = build_runs(plan, overrides)
        execution = execution_from_plan(plan, **cli_execution(args))
        if execution.errors():
            raise PlanError(execution.errors())
        if not (args.report or args.status):
            from rm_exps.runner import preflight

            preflight(runs, args.rerun)
    except PlanError as e:
        print(f"invalid plan {getattr(locals().get('args'), 'plan', '')}: {len(e.errors)} problem(s)", file=sys.stderr)
        for msg in e.errors:
            print(f"  - {msg}", file=sys.stderr)
        return 2
    if args.report:
        from rm_exps.report import plan_runs, report

        try:
            print(report(plan_runs(runs), args.metrics, args.pivot, args.format, args.plot), end="")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.status:
        print_status(runs)
        return 0
    if args.dry_run:
        for spec in runs:
            cfg = spec.config
            print(
                f"{spec.index:>3}  {spec.run_dir}  objective={cfg.objective} model={cfg.model} seed={cfg.random_seed}"
            )
        print(f"{len(runs)} run(s)")
        return 0
    from rm_exps.runner import is_main_process, print_results, run_all

    if not is_main_process():  # accelerate launch run_plan.py: the other ranks stay quiet
        logger.setLevel(logging.WARNING)
    from rm_exps.distributed import shutdown

    try:
        results = run_all(runs, rerun=args.rerun, execution=execution)
    except KeyboardInterrupt:
        print("interrupted; finished runs keep their summaries, the current run left none", file=sys.stderr)
        return 130
    finally:
        shutdown()
    if is_main_process():
        print_results(results)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
