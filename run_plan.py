"""Expand and execute an experiment plan.

    python run_plan.py --plan experiment_plans/quickstart.json
    python run_plan.py --plan PLAN --dry-run                 # list the runs and their folders
    python run_plan.py --plan PLAN --set lr=1e-5 --set epochs=2   # override a field in every run
    python run_plan.py --plan PLAN --lr 1e-5                 # the reference's override form
    python run_plan.py --plan PLAN --report [--pivot objective dataset accuracy]  # results table

Exit status: 0 when every run completed (or was already finished), 1 when a run failed,
2 when the plan is invalid (nothing is run or written), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rm_exps.plan import PlanError, build_runs, load_plan, parse_overrides


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", "--plan_config_path", dest="plan", required=True, help="JSON plan file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field in every run (before options and templating); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="validate, list the runs and their folders, run nothing")
    parser.add_argument("--rerun", action="store_true", help="run again runs that already finished")
    parser.add_argument("--report", action="store_true",
                        help="print the plan's results table (finished, failed and missing runs) and exit")
    from rm_exps.report import add_report_options
    add_report_options(parser)
    args, unknown = parser.parse_known_args(argv)
    # The reference's form: every other `--key value` (or `--key=value`) pair is an override.
    flat = [part for token in unknown for part in (token.split("=", 1) if token.startswith("--") else [token])]
    pairs = []
    if len(flat) % 2 or any(not k.startswith("--") for k in flat[::2]):
        parser.error(f"overrides must come as '--key value' pairs; got {' '.join(unknown)}")
    pairs = [f"{k[2:]}={v}" for k, v in zip(flat[::2], flat[1::2])]
    return args, parse_overrides(pairs + args.set)


def main(argv: list[str] | None = None) -> int:
    from rm_exps.run import console_handler

    logger = logging.getLogger("rm_exps")
    if not any(getattr(h, "rm_exps_console", False) for h in logger.handlers):
        logger.addHandler(console_handler())
    logger.setLevel(logging.INFO)
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        runs = build_runs(load_plan(args.plan), overrides)
        if not args.report:
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
    if args.dry_run:
        for spec in runs:
            cfg = spec.config
            print(f"{spec.index:>3}  {spec.run_dir}  objective={cfg.objective} model={cfg.model} seed={cfg.random_seed}")
        print(f"{len(runs)} run(s)")
        return 0
    from rm_exps.runner import print_results, run_all
    try:
        results = run_all(runs, rerun=args.rerun)
    except KeyboardInterrupt:
        print("interrupted; finished runs keep their summaries, the current run left none", file=sys.stderr)
        return 130
    print_results(results)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
