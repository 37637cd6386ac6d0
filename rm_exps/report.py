"""Cross-run tables: collect summary.json files into one table, the paper's pivot view, or a paired comparison.

    python -m rm_exps.report outputs/uf                       # one row per run, accuracies with 95% intervals
    python -m rm_exps.report outputs/uf --metrics "eval * loss" "train*"
    python -m rm_exps.report outputs/uf --pivot objective dataset accuracy --format markdown
    python -m rm_exps.report outputs/uf --pivot objective dataset accuracy --plot uf.png
    python -m rm_exps.report outputs/uf --compare objective ex_rm im_rm   # EX-RM - IM-RM per repetition
    python run_plan.py --plan PLAN --report                   # the plan's runs, missing ones too

Each row shows the config fields that differ across the runs (found automatically), the status
and the score; the pairwise accuracy (`eval {set} accuracy`) over n evaluated pairs gets its 95%
Wilson interval (summary.json's `eval_pairs`). A pivot averages over the runs that share a cell
(e.g. repetitions) and shows mean ± std with the 95% t-interval of the mean (one run: the Wilson
interval over its pairs). A
comparison pairs the runs of two values of a field by repetition and gives the mean difference
with its 95% t-interval. The special column/row name `dataset` is the evaluation set of a metric
named `eval {dataset} {metric}`.

What the intervals do not show: a t-interval over repetitions is conditional on the evaluation
pairs the runs share (it measures seed-to-seed variation, not how another test set would score),
and the Wilson interval of one run ignores seed-to-seed variation."""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rm_exps.stats import Estimate, accuracy_from_rate, mean_interval, paired_difference

if TYPE_CHECKING:  # pandas is imported where a table is built: --status and --dry-run never need it
    import pandas as pd

# Fields that always differ between runs and say nothing about the comparison.
IDENTITY_FIELDS = {"experiment_name", "random_seed", "outputs_dir"}
DEFAULT_METRICS = ("*accuracy",)


def load_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One record per run folder under `paths`: {"run", "folder", "config", "summary"}."""
    runs = []
    for path in map(Path, paths):
        summaries = [path] if path.is_file() else sorted(path.rglob("summary.json"))
        for summary_file in summaries:
            folder = summary_file.parent
            runs.append(
                {
                    "run": folder.name,
                    "folder": str(folder),
                    "rep": repetition_of(folder.name),
                    "summary": _read(summary_file),
                    "config": _read(folder / "config.json") or {},
                }
            )
    return runs


def plan_runs(specs: list[Any]) -> list[dict[str, Any]]:
    """Records for a plan's run specs; a run without a summary is shown as `missing`."""
    from rm_exps.outputs import read_json

    out = []
    for spec in specs:
        summary = read_json(spec.run_dir / "summary.json") or {"status": "missing"}
        out.append(
            {
                "run": spec.name,
                "folder": str(spec.run_dir),
                "rep": spec.repetition,
                "summary": summary,
                "config": spec.config.flat(),
            }
        )
    return out


def repetition_of(folder_name: str) -> int:
    """The repetition a run folder holds (`<name>__rep<k>`; a plan without repetitions: 1)."""
    match = re.search(r"__rep(\d+)$", folder_name)
    return int(match.group(1)) if match else 1


def eval_pairs(summary: dict[str, Any] | None, dataset: str) -> int | None:
    """How many pairs the run evaluated `dataset` on (summary.json's `eval_pairs`; None for runs
    written before it was recorded)."""
    n = ((summary or {}).get("eval_pairs") or {}).get(dataset)
    return int(n) if isinstance(n, int) and n > 0 else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def varying_fields(runs: list[dict[str, Any]]) -> list[str]:
    """Config fields whose value is not the same in every run, in config order."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r["config"]))
    out = []
    for key in keys:
        if key in IDENTITY_FIELDS:
            continue
        values = {json.dumps(r["config"].get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            out.append(key)
    return out


def metric_values(summary: dict[str, Any] | None) -> dict[str, float]:
    values = ((summary or {}).get("last_tracked_values")) or {}
    return {name: v.get("value") for name, v in values.items() if isinstance(v, dict)}


PAIR_ACCURACY = "accuracy"  # `eval {dataset} accuracy`: the share of the set's evaluated pairs ranked right


def is_pair_accuracy(metric: str) -> bool:
    """The pairwise accuracy over an evaluation set's pairs (a binomial proportion over `eval_pairs`).
    Other accuracies count other things (generation prompts, Persona's shifted variants of a pair, a
    subset), so no interval over the set's pairs is given for them."""
    return metric == PAIR_ACCURACY


def accuracy_interval_of(summary: dict[str, Any] | None, name: str, value: Any) -> Estimate | None:
    """The Wilson interval of an `eval {dataset} accuracy` value over the pairs the run evaluated,
    when summary.json says how many."""
    parts = name.split(" ", 2)
    if len(parts) < 3 or parts[0] != "eval" or not is_pair_accuracy(parts[2]) or not isinstance(value, (int, float)):
        return None
    n = eval_pairs(summary, parts[1])
    return accuracy_from_rate(float(value), n) if n else None


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def runs_table(runs: list[dict[str, Any]], metrics: Iterable[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per run: varying config fields, status, score, then the metrics matching the globs."""
    import pandas as pd

    fields = varying_fields(runs)
    rows = []
    for r in runs:
        summary = r["summary"] or {"status": "missing"}
        row = {
            "run": r["run"],
            **{f: _cell(r["config"].get(f)) for f in fields},
            "status": summary.get("status", "unknown"),
            "score": summary.get("score"),
        }
        values = metric_values(summary)
        for pattern in metrics:
            for name, value in values.items():
                if fnmatch.fnmatch(name, pattern):
                    row[name] = value
                    if (interval := accuracy_interval_of(summary, name, value)) is not None:
                        row[f"{name} 95% CI"] = f"[{interval.low:.3f}, {interval.high:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def long_table(runs: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    """One row per (run, evaluation dataset) for `eval {dataset} {metric}`, with every config field."""
    import pandas as pd

    rows = []
    for r in runs:
        for name, value in metric_values(r["summary"]).items():
            parts = name.split(" ", 2)
            if len(parts) == 3 and parts[0] == "eval" and parts[2] == metric and isinstance(value, (int, float)):
                rows.append(
                    {
                        **{k: _cell(v) for k, v in r["config"].items()},
                        "run": r["run"],
                        "rep": r.get("rep", 1),
                        "dataset": parts[1],
                        "pairs": eval_pairs(r["summary"], parts[1]),
                        "value": float(value),
                    }
                )
    return pd.DataFrame(rows)


@dataclass
class Pivot:
    """`metric` with `row` x `column`: per cell the mean over runs, their std and count, and a 95%
    interval: of the mean over repetitions (Student t), or for one run of an accuracy the Wilson
    interval over its pairs (nan where neither applies)."""

    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame


def pivot(runs: list[dict[str, Any]], row: str, column: str, metric: str) -> Pivot:
    """The pivot of `eval {dataset} {metric}` with `row` x `column` (config fields or `dataset`)."""
    data = long_table(runs, metric)
    if data.empty:
        raise ValueError(f"no run has a metric 'eval <dataset> {metric}'")
    for key in (row, column):
        if key not in data.columns:
            raise ValueError(f"'{key}' is neither a config field nor 'dataset'")
    import pandas as pd

    grouped = data.groupby([row, column], sort=False)
    intervals = {key: _cell_interval(cell, metric) for key, cell in grouped}
    index = pd.MultiIndex.from_tuples(list(intervals), names=[row, column])
    low = pd.Series([e.low if e else math.nan for e in intervals.values()], index=index).unstack(column)
    high = pd.Series([e.high if e else math.nan for e in intervals.values()], index=index).unstack(column)
    values = grouped["value"]
    mean = values.mean().unstack(column)
    return Pivot(
        mean,
        values.std().unstack(column),
        values.count().unstack(column),
        low.reindex_like(mean),
        high.reindex_like(mean),
    )


def _cell_interval(cell: pd.DataFrame, metric: str) -> Estimate | None:
    if len(cell) > 1:
        return mean_interval(cell["value"])
    pairs = cell["pairs"].iloc[0]
    if is_pair_accuracy(metric) and pairs is not None and not math.isnan(float(pairs)):
        return accuracy_from_rate(float(cell["value"].iloc[0]), int(pairs))
    return None


def format_pivot(table: Pivot) -> pd.DataFrame:
    import pandas as pd

    def cell(i: Any, c: Any) -> str:
        m, s, n = table.mean.at[i, c], table.std.at[i, c], table.count.at[i, c]
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "-"
        lo, hi = table.low.at[i, c], table.high.at[i, c]
        interval = "" if math.isnan(lo) else f" [{lo:.4f}, {hi:.4f}]"
        return f"{m:.4f} ± {s:.4f}{interval} (n={int(n)})" if n > 1 else f"{m:.4f}{interval} (n=1)"

    return pd.DataFrame(
        [[cell(i, c) for c in table.mean.columns] for i in table.mean.index],
        index=table.mean.index,
        columns=table.mean.columns,
    ).reset_index()


def compare(runs: list[dict[str, Any]], field: str, a: str, b: str, metric: str = "accuracy") -> pd.DataFrame:
    """Paired comparison of two values of `field`: for every evaluation set and setting of the other
    varying fields, the runs of `a` and `b` of the same repetition (same data, seeds drawn per
    repetition) are paired, and the mean of their differences `a - b` gets a 95% t-interval (one
    pair: no interval). Pairing removes what the two settings share, e.g. which test pairs are hard."""
    import pandas as pd

    data = long_table(runs, metric)
    if data.empty:
        raise ValueError(f"no run has a metric 'eval <dataset> {metric}'")
    if field not in data.columns:
        raise ValueError(f"'{field}' is not a config field of these runs")
    data[field] = data[field].astype(str)
    found = sorted(set(data[field]))
    for value in (a, b):
        if value not in found:
            raise ValueError(f"no run has {field} = {value!r} (found: {', '.join(found)})")
    others = [f for f in varying_fields(runs) if f != field and f in data.columns]
    keys = ["dataset", *others]
    rows = []
    for setting, group in data.groupby(keys, sort=False, dropna=False):
        by_rep = {v: dict(zip(g["rep"], g["value"])) for v, g in group.groupby(field)}
        if a not in by_rep or b not in by_rep or not set(by_rep[a]) & set(by_rep[b]):
            continue
        diff = paired_difference(by_rep[a], by_rep[b])
        setting = setting if isinstance(setting, tuple) else (setting,)
        rows.append(
            {
                **dict(zip(keys, setting)),
                f"{a} - {b}": diff.value,
                "95% CI": "-" if math.isnan(diff.low) else f"[{diff.low:.4f}, {diff.high:.4f}]",
                "repetitions": diff.n,
                a: statistics.fmean(by_rep[a].values()),
                b: statistics.fmean(by_rep[b].values()),
            }
        )
    if not rows:
        raise ValueError(f"no repetition has both {field} = {a!r} and {field} = {b!r} to pair")
    return pd.DataFrame(rows)


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    cells = [[_fmt(v) for v in row] for row in table.itertuples(index=False)]
    headers = [str(c) for c in table.columns]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
    from rich.console import Console
    from rich.table import Table

    rich_table = Table(show_lines=False)
    for h in headers:
        rich_table.add_column(h)
    for row in cells:
        rich_table.add_row(*row)
    console = Console(width=max(120, sum(len(h) + 3 for h in headers)), file=io.StringIO())
    console.print(rich_table)
    return console.file.getvalue()


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):  # 4 decimals, except values that would round to 0 (a lr of 1e-05)
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def plot_pivot(table: Pivot, path: str | Path, metric: str) -> None:
    """Grouped bars of the pivot (one group per row, one bar per column) with 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = table.mean
    below = (mean - table.low).fillna(0.0).to_numpy().T  # columns x rows, as pandas wants asymmetric errors
    above = (table.high - mean).fillna(0.0).to_numpy().T
    ax = mean.plot.bar(
        yerr=np.stack([below, above], axis=1),
        capsize=3,
        figsize=(max(6, 1.2 * len(mean) * len(mean.columns) / 2), 4),
        rot=0,
    )
    ax.set_ylabel(f"{metric} (95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)


def report(
    runs: list[dict[str, Any]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    pivot_spec: list[str] | None = None,
    fmt: str = "table",
    plot: str | None = None,
    compare_spec: list[str] | None = None,
    compare_metric: str = "accuracy",
) -> str:
    if compare_spec:
        return render(compare(runs, *compare_spec, metric=compare_metric), fmt)
    if pivot_spec:
        row, column, metric = pivot_spec
        table = pivot(runs, row, column, metric)
        if plot:
            plot_pivot(table, plot, metric)
        if fmt == "json":
            parts = ("mean", "std", "count", "low", "high")
            return json.dumps({k: json.loads(getattr(table, k).to_json(orient="index")) for k in parts}, indent=2)
        return render(format_pivot(table) if fmt != "csv" else table.mean.reset_index(), fmt)
    if plot:
        raise ValueError("--plot needs --pivot ROW COL METRIC")
    return render(runs_table(runs, metrics), fmt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rm_exps.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="run folders, folders of runs, or summary.json files")
    add_report_options(parser)
    return parser


def add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="glob patterns of metric names")
    parser.add_argument(
        "--pivot",
        nargs=3,
        metavar=("ROW", "COL", "METRIC"),
        help="e.g. objective dataset accuracy: mean ± std and 95%% interval of 'eval {dataset} accuracy'",
    )
    parser.add_argument(
        "--compare",
        nargs=3,
        metavar=("FIELD", "A", "B"),
        help="e.g. objective ex_rm im_rm: per-repetition differences A - B of --compare-metric, mean and 95%% interval",
    )
    parser.add_argument("--compare-metric", default="accuracy", help="the metric --compare pairs (default: accuracy)")
    parser.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    parser.add_argument("--plot", metavar="FILE.png", help="grouped bar chart of the pivot")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = load_runs(args.paths)
    if not runs:
        print(f"no summary.json under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    try:
        print(report(runs, args.metrics, args.pivot, args.format, args.plot, args.compare, args.compare_metric), end="")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
