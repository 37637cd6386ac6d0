"""One plan run with and without a plan option, in fresh processes, alternating: the before/after
figure of an optimization.

Why: every optimization in docs/PERFORMANCE.md must show what it buys on real work. This takes
one run of a plan (e.g. the CPU Hamiltonian-cycle EX-RM run), runs it as it is ("before") and with
the option fields set ("after"), A B A B ..., each in its own process so peak RSS is its own, and
prints train / eval / precompute seconds, real training tokens, padding, tokens/s and peak RSS, then
the ratios after / before.

    python bench/bench_option.py --plan experiment_plans/cpu/ham_cycle.json --run cpu_ham_cycle_ex_rm \\
        --option share_prompt=true --set epochs=1 --rounds 2
    python bench/bench_option.py --plan experiment_plans/cpu/ultrafeedback.json --run cpu_uf_im_rm \\
        --option group_by_length=true --set num_train_samples=16

`--set` changes both sides (make the work smaller); `--option` only the "after" side. Both sides
run with the same seed, `cache_reference_logps: false` (each computes its own reference
log-probs) and `save_model: false`, into a temporary outputs folder; the dataset files are shared
(prepared once, by the first child).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_vs_trl import RESULT_PREFIX, run_child_process  # this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("train_s", "eval_s", "precompute_s", "train_tokens", "train_tokens_per_s", "padding_fraction", "peak_rss_mb")


def run_config(plan_path: str, run: str, overrides: list[str]) -> dict[str, Any]:
    """The expanded config of the plan run named `run`, with `overrides` (KEY=VALUE) applied."""
    from rm_exps.config import flat_defaults
    from rm_exps.plan import build_runs, load_plan, parse_overrides

    runs = build_runs(load_plan(plan_path), parse_overrides(overrides))
    names = [spec.config.experiment_name for spec in runs]
    if run not in names:
        sys.exit(f"no run {run!r} in {plan_path}; its runs: {', '.join(names)}")
    flat, defaults = runs[names.index(run)].config.flat(), flat_defaults()
    return {k: v for k, v in flat.items() if v != defaults[k] or k == "experiment_name"}


def side_configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The run's config without ("before") and with ("after") the option, same seed, both without
    reference-log-prob cache, saved model or plots, and writing into a temporary folder (set by the child)."""
    before = run_config(args.plan, args.run, args.set)
    after = {**run_config(args.plan, args.run, args.set + args.option), "random_seed": before["random_seed"]}
    fixed = {"cache_reference_logps": False, "save_model": False, "save_metric_plots": False}
    return {"before": {**before, **fixed}, "after": {**after, **fixed}}


def run_child(config_path: str) -> None:
    """Run one side's config as a one-run plan in this fresh process; print its figures."""
    import run_plan

    with tempfile.TemporaryDirectory(prefix="bench_option_") as tmp:
        config = {**json.loads(Path(config_path).read_text()), "outputs_dir": f"{tmp}/out"}
        plan = Path(tmp) / "plan.json"
        plan.write_text(json.dumps({"name": "bench_option", "configurations": [{"base_config": config}]}))
        if run_plan.main(["--plan", str(plan)]) != 0:
            raise RuntimeError("the run failed (its log is above)")
        summary = json.loads((Path(tmp) / "out" / config["experiment_name"] / "summary.json").read_text())
    result = {key: summary.get(key) for key in FIELDS if key != "peak_rss_mb"}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["final_metrics"] = {
        k: v["value"]
        for k, v in summary.get("last_tracked_values", {}).items()
        if k.startswith("eval") and k.endswith("accuracy")
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_side(config_path: Path, log_path: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)]
    result, process_s = run_child_process(cmd, config_path.stem, log_path)
    return {**result, "process_s": round(process_s, 1), "load_before": round(load, 2)}


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    keys = ("process_s", *FIELDS, "load_before")
    rows = [("side", *keys), ("---",) * (len(keys) + 1)]
    for side, rs in results.items():
        rows.append(
            (side, *(_fmt(statistics.mean(r[k] for r in rs)) if rs[0].get(k) is not None else "-" for k in keys))
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def ratios(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for key in ("process_s", "train_s", "eval_s", "precompute_s", "train_tokens", "peak_rss_mb"):
        before = statistics.mean(r[key] or 0 for r in results["before"])
        after = statistics.mean(r[key] or 0 for r in results["after"])
        if before:
            lines.append(f"  after / before {key}: {after / before:.2f}")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", help="the plan file (required)")
    parser.add_argument("--run", help="experiment_name of the plan run to time (required)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="the 'after' side's fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fields of both sides")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs to time; means are reported")
    parser.add_argument("--json", help="write every child's figures here")
    parser.add_argument("--child", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.child:
        return run_child(args.child)
    if not (args.plan and args.run):
        parser.error("give the plan run to time with --plan PLAN --run EXPERIMENT_NAME")
    if not args.option:
        parser.error("give the option to measure with --option KEY=VALUE")
    configs = side_configs(args)  # a bad plan, run or field fails here, before any compute
    log_dir = Path(tempfile.mkdtemp(prefix="bench_option_"))
    for side, config in configs.items():
        (log_dir / f"{side}.json").write_text(json.dumps(config, indent=1))
    print(
        f"{args.run} of {args.plan}; both sides {args.set or 'as planned'}; after: {args.option}; "
        f"{args.rounds} round(s); configs and logs in {log_dir}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for side in ("before", "after"):
            result = run_side(log_dir / f"{side}.json", log_dir / f"r{r + 1}_{side}.log")
            results[side].append(result)
            print(
                f"round {r + 1} {side}: train {result['train_s']:.1f} s, eval {result['eval_s']:.1f} s, "
                f"peak RSS {result['peak_rss_mb']:,.0f} MB, {result['final_metrics']}",
                flush=True,
            )
            if args.json:
                Path(args.json).write_text(json.dumps({"arguments": vars(args), "results": results}, indent=2))
    print(f"\nmeans over {args.rounds} round(s):\n{table(results)}\n{ratios(results)}")


if __name__ == "__main__":
    main()
