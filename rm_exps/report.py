"""Cross-run tables: collect summary.json files into one table, or the paper's pivot view.

    python -m rm_exps.report outputs/uf                       # one row per run, accuracies
    python -m rm_exps.report outputs/uf --metrics "eval * loss" "train*"
    python -m rm_exps.report outputs/uf --pivot objective dataset accuracy --format markdown
    python -m rm_exps.report outputs/uf --pivot objective dataset accuracy --plot uf.png
    python run_plan.py --plan PLAN --report                   # the plan's runs, missing ones too

Each row shows the config fields that differ across the runs (found automatically), the status
and the score. A pivot averages over the runs that share a cell (e.g. repetitions) and shows
mean ± std. The special column/row name `dataset` is the evaluation set of a metric named
`eval {dataset} {metric}`.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
            {"run": spec.name, "folder": str(spec.run_dir), "summary": summary, "config": spec.config.model_dump()}
        )
    return out


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
            row.update({name: v for name, v in values.items() if fnmatch.fnmatch(name, pattern)})
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
                        "dataset": parts[1],
                        "value": float(value),
                    }
                )
    return pd.DataFrame(rows)


def pivot(
    runs: list[dict[str, Any]], row: str, column: str, metric: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(mean, std, count) tables of `metric` with `row` × `column` (config fields or `dataset`)."""
    data = long_table(runs, metric)
    if data.empty:
        raise ValueError(f"no run has a metric 'eval <dataset> {metric}'")
    for key in (row, column):
        if key not in data.columns:
            raise ValueError(f"'{key}' is neither a config field nor 'dataset'")
    grouped = data.groupby([row, column], sort=False)["value"]
    mean = grouped.mean().unstack(column)
    std = grouped.std().unstack(column)
    count = grouped.count().unstack(column)
    return mean, std, count


def format_pivot(mean: pd.DataFrame, std: pd.DataFrame, count: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    def cell(m: float, s: float, n: float) -> str:
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return "-"
        return f"{m:.4f} ± {s:.4f} (n={int(n)})" if n and n > 1 else f"{m:.4f}"

    return pd.DataFrame(
        [[cell(mean.at[i, c], std.at[i, c], count.at[i, c]) for c in mean.columns] for i in mean.index],
        index=mean.index,
        columns=mean.columns,
    ).reset_index()


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


def plot_pivot(mean: pd.DataFrame, std: pd.DataFrame, path: str | Path, metric: str) -> None:
    """Grouped bars of the pivot (one group per row, one bar per column) with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = mean.plot.bar(
        yerr=std.fillna(0.0), capsize=3, figsize=(max(6, 1.2 * len(mean) * len(mean.columns) / 2), 4), rot=0
    )
    ax.set_ylabel(metric)
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
) -> str:
    if pivot_spec:
        row, column, metric = pivot_spec
        mean, std, count = pivot(runs, row, column, metric)
        if plot:
            plot_pivot(mean, std, plot, metric)
        if fmt == "json":
            return json.dumps(
                {
                    "mean": json.loads(mean.to_json(orient="index")),
                    "std": json.loads(std.to_json(orient="index")),
                    "count": json.loads(count.to_json(orient="index")),
                },
                indent=2,
            )
        return render(format_pivot(mean, std, count) if fmt != "csv" else mean.reset_index(), fmt)
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
        help="e.g. objective dataset accuracy: mean ± std of 'eval {dataset} accuracy'",
    )
    parser.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    parser.add_argument("--plot", metavar="FILE.png", help="grouped bar chart of the pivot")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = load_runs(args.paths)
    if not runs:
        print(f"no summary.json under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    try:
        print(report(runs, args.metrics, args.pivot, args.format, args.plot), end="")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
