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
import sys

from rm_exps.launch import LAUNCHERS
from rm_exps.logs import log_to_console
from rm_exps.report import add_report_options
from rm_exps.sweep import ReportOptions, Request, run

SLURM_KEYS = {
    "partition": "partition",
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem-gb": "mem_gb",
    "time-min": "timeout_min",
    "cluster": "cluster",
}


def parse_args(argv: list[str]) -> Request:
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
    if len(flat) % 2 or any(not k.startswith("--") for k in flat[::2]):
        parser.error(f"overrides must come as '--key value' pairs; got {' '.join(unknown)}")
    pairs = [f"{k[2:]}={v}" for k, v in zip(flat[::2], flat[1::2])]
    return Request(
        plan=args.plan,
        action="report" if args.report else "status" if args.status else "dry-run" if args.dry_run else "run",
        overrides=(*pairs, *args.set),
        rerun=args.rerun,
        launch=cli_execution(args),
        report=ReportOptions(
            tuple(args.metrics),
            tuple(args.pivot) if args.pivot else None,
            args.format,
            args.plot,
            tuple(args.compare) if args.compare else None,
            args.compare_metric,
        ),
    )


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


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and hand the request to the sweep (rm_exps.sweep), which returns the exit status."""
    log_to_console()
    return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
