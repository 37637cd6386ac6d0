"""The report command on a folder of hand-written summaries."""

import json

import pytest

from rm_exps import report as rep

RUNS = [  # (folder, objective, lr, repetition seed, status, test acc, paraphrase acc)
    ("uf_ex_rm__rep1", "ex_rm", 1e-6, 1, "completed", 0.70, 0.66),
    ("uf_ex_rm__rep2", "ex_rm", 1e-6, 2, "completed", 0.74, 0.70),
    ("uf_im_rm__rep1", "im_rm", 1e-6, 3, "completed", 0.60, 0.52),
    ("uf_im_rm__rep2", "im_rm", 1e-6, 4, "failed", None, None),
]


@pytest.fixture
def outputs(tmp_path):
    for folder, objective, lr, seed, status, test, para in RUNS:
        run = tmp_path / "uf" / folder
        run.mkdir(parents=True)
        config = {
            "experiment_name": folder.split("__")[0],
            "objective": objective,
            "lr": lr,
            "random_seed": seed,
            "model": "smollm2-135m-instruct",
            "dataset_path": {"name": "ultrafeedback"},
        }
        values = (
            {}
            if test is None
            else {
                "train accuracy": {"value": 0.9, "epoch": 1},
                "eval test accuracy": {"value": test, "epoch": 1},
                "eval paraphrase_test accuracy": {"value": para, "epoch": 1},
                "eval test loss": {"value": 0.5, "epoch": 1},
            }
        )
        summary = {"status": status, "score": test, "last_tracked_values": values}
        if status == "failed":
            summary["error"] = "RuntimeError: boom"
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps(summary))
    return tmp_path / "uf"


def test_runs_table_finds_varying_fields_and_globbed_metrics(outputs):
    runs = rep.load_runs([outputs])
    table = rep.runs_table(runs)
    assert rep.varying_fields(runs) == ["objective"]  # lr and model are shared, seeds are identity
    assert list(table.columns) == [
        "run",
        "objective",
        "status",
        "score",
        "train accuracy",
        "eval test accuracy",
        "eval paraphrase_test accuracy",
    ]
    assert table.loc[table.run == "uf_im_rm__rep2", "status"].item() == "failed"
    loss_table = rep.runs_table(runs, ["eval * loss"])
    assert "eval test loss" in loss_table.columns and "eval test accuracy" not in loss_table.columns


def test_pivot_averages_repetitions(outputs):
    table = rep.pivot(rep.load_runs([outputs]), "objective", "dataset", "accuracy")
    mean, std, count = table.mean, table.std, table.count
    assert mean.at["ex_rm", "test"] == pytest.approx(0.72)
    assert std.at["ex_rm", "test"] == pytest.approx(0.0282843, abs=1e-6)
    assert count.at["ex_rm", "paraphrase_test"] == 2 and count.at["im_rm", "test"] == 1  # the failed run has no values
    half = 12.706204736174707 * 0.0282843 / 2**0.5  # t(0.975, 1 dof) * std / sqrt(2)
    assert table.low.at["ex_rm", "test"] == pytest.approx(0.72 - half, abs=1e-5)
    assert table.high.at["ex_rm", "test"] == pytest.approx(0.72 + half, abs=1e-5)
    text = rep.report(rep.load_runs([outputs]), pivot_spec=["objective", "dataset", "accuracy"], fmt="markdown")
    assert "| ex_rm | 0.7200 ± 0.0283 [0.4659, 0.9741] (n=2) | 0.6800 ± 0.0283 [0.4259, 0.9341] (n=2) |" in text
    assert "| im_rm | 0.6000 (n=1) | 0.5200 (n=1) |" in text  # no pair counts recorded: no interval for one run
    with pytest.raises(ValueError, match="neither a config field"):
        rep.pivot(rep.load_runs([outputs]), "optimizer", "dataset", "accuracy")


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_every_format_renders_all_runs(outputs, fmt):
    text = rep.report(rep.load_runs([outputs]), fmt=fmt)
    for folder, *_ in RUNS:
        assert folder in text
    if fmt == "json":
        rows = json.loads(text)
        assert [r["status"] for r in rows].count("failed") == 1
    if fmt == "csv":
        assert text.splitlines()[0].startswith("run,objective,status,score")


def test_plot_file_is_written(outputs, tmp_path):
    path = tmp_path / "pivot.png"
    rep.report(rep.load_runs([outputs]), pivot_spec=["objective", "dataset", "accuracy"], plot=str(path))
    assert path.stat().st_size > 1000


def test_plan_report_shows_missing_runs(tmp_path, capsys):
    import run_plan

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "split": s}) + "\n" for s in ("train", "test")
        )
    )  # a run needs a test split
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "configurations": [
                    {
                        "base_config": {
                            "experiment_name": "r_{objective}",
                            "model": "tiny-random-llama",
                            "dataset_path": str(data),
                            "outputs_dir": str(tmp_path / "out"),
                        },
                        "options": {"objective": ["ex_rm", "im_rm"]},
                    }
                ]
            }
        )
    )
    assert run_plan.main(["--plan", str(plan), "--report", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("r_ex_rm,ex_rm,missing") and lines[2].startswith("r_im_rm,im_rm,missing")


def test_small_values_are_not_rounded_to_zero():
    from rm_exps.report import _fmt

    assert (_fmt(1e-05), _fmt(0.62500), _fmt(0.0), _fmt(None)) == ("1e-05", "0.6250", "0.0000", "-")


def write_run(root, folder, objective, accuracy, pairs, seed=1):
    run = root / folder
    run.mkdir(parents=True)
    config = {"experiment_name": folder.split("__")[0], "objective": objective, "random_seed": seed}
    values = {"eval test accuracy": {"value": accuracy, "epoch": 1}}
    summary = {"status": "completed", "score": accuracy, "last_tracked_values": values, "eval_pairs": {"test": pairs}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(summary))


def test_an_accuracy_over_n_pairs_gets_its_wilson_interval(tmp_path):
    write_run(tmp_path, "a", "ex_rm", 0.8, 10)
    write_run(tmp_path, "b", "im_rm", 0.5, 10)
    runs = rep.load_runs([tmp_path])
    table = rep.runs_table(runs)
    assert table.loc[table.run == "a", "eval test accuracy 95% CI"].item() == "[0.490, 0.943]"
    piv = rep.pivot(runs, "objective", "dataset", "accuracy")  # one run per cell: the interval over its pairs
    assert (round(piv.low.at["ex_rm", "test"], 3), round(piv.high.at["ex_rm", "test"], 3)) == (0.49, 0.943)
    text = rep.report(runs, pivot_spec=["objective", "dataset", "accuracy"], fmt="markdown")
    assert "0.8000 [0.4902, 0.9433] (n=1)" in text


def test_the_difference_of_identical_runs_is_zero_with_zero_width(tmp_path):
    for k, acc in enumerate([0.8, 0.6, 0.7], start=1):
        write_run(tmp_path, f"uf_ex_rm__rep{k}", "ex_rm", acc, 100, seed=k)
        write_run(tmp_path, f"uf_im_rm__rep{k}", "im_rm", acc, 100, seed=10 + k)
    table = rep.compare(rep.load_runs([tmp_path]), "objective", "ex_rm", "im_rm")
    row = table.iloc[0]
    assert (row["dataset"], row["ex_rm - im_rm"], row["95% CI"], row["repetitions"]) == (
        "test",
        0.0,
        "[0.0000, 0.0000]",
        3,
    )


def test_compare_pairs_by_repetition(tmp_path):
    ex, im = [0.9, 0.8, 0.85], [0.6, 0.55, 0.5]  # differences 0.3, 0.25, 0.35
    for k in range(3):
        write_run(tmp_path, f"uf_ex_rm__rep{k + 1}", "ex_rm", ex[k], 100, seed=k)
        write_run(tmp_path, f"uf_im_rm__rep{k + 1}", "im_rm", im[k], 100, seed=10 + k)
    write_run(tmp_path, "uf_im_rm__rep4", "im_rm", 0.1, 100, seed=99)  # no ex_rm partner: not paired
    runs = rep.load_runs([tmp_path])
    row = rep.compare(runs, "objective", "ex_rm", "im_rm").iloc[0]
    half = 4.302652729911275 * 0.05 / 3**0.5  # t(0.975, 2 dof) * std 0.05 / sqrt(3)
    assert row["ex_rm - im_rm"] == pytest.approx(0.3) and row["repetitions"] == 3
    assert row["95% CI"] == f"[{0.3 - half:.4f}, {0.3 + half:.4f}]"
    text = rep.report(runs, compare_spec=["objective", "ex_rm", "im_rm"], fmt="markdown")
    assert "ex_rm - im_rm" in text and "0.3000" in text
    with pytest.raises(ValueError, match="no run has objective = 'dpo'"):
        rep.compare(runs, "objective", "ex_rm", "dpo")


def test_only_the_pairwise_accuracy_gets_an_interval_over_the_pairs(tmp_path):
    """Other accuracies count other things (generation prompts, Persona's shifted variants of a pair)."""
    write_run(tmp_path, "a", "im_rm", 0.8, 10)
    summary_file = tmp_path / "a" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["last_tracked_values"]["eval test ham cycle gen accuracy"] = {"value": 0.5, "epoch": 1}
    summary_file.write_text(json.dumps(summary))
    table = rep.runs_table(rep.load_runs([tmp_path]))
    assert "eval test accuracy 95% CI" in table.columns
    assert "eval test ham cycle gen accuracy 95% CI" not in table.columns


def test_the_end_of_plan_table_shows_the_interval(tmp_path):
    from types import SimpleNamespace

    from rich.console import Console

    from rm_exps.config import RunConfig
    from rm_exps.sweep import RunResult, results_table

    write_run(tmp_path, "a", "ex_rm", 0.8, 10)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    spec = SimpleNamespace(index=1, name="a", config=RunConfig())
    console = Console(width=200, record=True)
    console.print(results_table([RunResult(spec, "completed", summary)]))
    assert "0.8000 [0.49, 0.94]" in console.export_text()
