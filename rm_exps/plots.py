"""Per-run metric plots: one PNG per metric tag, every metric of the tag against the epoch.

A tag groups the metrics a reader compares: `eval accuracy` holds the accuracy on every
evaluation set, `train rewards` the chosen and rejected rewards.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def metric_tag(name: str) -> str:
    """`eval paraphrase_test chosen reward` -> `eval reward`; `train chosen rewards` -> `train rewards`;
    a Persona token's reward (`eval test not really reward`) -> `eval paraphrased responses reward`."""
    words = name.split(" ")
    if words[0] == "eval" and len(words) > 2:
        words = [words[0]] + words[2:]  # drop the dataset key
        if words[-1] == "reward" and words[1:-1] not in (["chosen"], ["rejected"], ["paraphrased", "responses"]):
            return "eval paraphrased responses reward"
    return " ".join(w for w in words if w not in ("chosen", "rejected"))


def save_metric_plots(folder: Path, series: dict[str, list[tuple[int, float]]]) -> list[Path]:
    """Draw every tag of `series` ({metric: [(epoch, value)]}) into folder/plots/<tag>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_tag: dict[str, list[str]] = defaultdict(list)
    for name in series:
        by_tag[metric_tag(name)].append(name)
    out_dir = Path(folder) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for tag, names in by_tag.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            epochs, values = zip(*series[name])
            ax.plot([e + 1 for e in epochs], values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{tag.lower().replace(' ', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
