"""`run_plan.py --dry-run`, `--status`, `--report` and `--help` read plans and run folders only: they
print what they should and import no torch, transformers, datasets or accelerate (a dry-run
stays well under the 1.5 s of the issue; torch alone takes seconds to import)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiment_plans" / "quickstart.json"
HEAVY = ("torch", "transformers", "datasets", "accelerate")

# Runs run_plan.main in a fresh interpreter, then reports its exit status and the packages it loaded.
PROBE = """
import json, sys
import run_plan
try:
    code = run_plan.main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
print(json.dumps({"code": code, "packages": sorted({m.split(".")[0] for m in sys.modules})}), file=sys.stderr)
"""


def run_cli(*args: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, heavy modules imported) of `run_plan.py ARGS` in a subprocess."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    probe = json.loads(result.stderr.strip().splitlines()[-1])
    return probe["code"], result.stdout, [p for p in HEAVY if p in probe["packages"]]


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, tuple[int, str, list[str]]]:
    """Each command once on the quickstart plan, its outputs in an empty folder."""
    outputs = tmp_path_factory.mktemp("outputs")
    plan = ["--plan", str(QUICKSTART), "--set", f"outputs_dir={outputs}"]
    return {
        "--dry-run": run_cli(*plan, "--dry-run"),
        "--status": run_cli(*plan, "--status"),
        "--report": run_cli(*plan, "--report", "--format", "csv"),
        "--help": run_cli("--help"),
    }


def test_dry_run_lists_the_runs(commands):
    code, out, _ = commands["--dry-run"]
    assert code == 0
    assert "objective=ex_rm" in out and "objective=im_rm" in out and out.rstrip().endswith("2 run(s)")


def test_status_says_nothing_started(commands):
    code, out, _ = commands["--status"]
    assert code == 0
    assert "ham_cycle_ex_rm" in out and out.rstrip().endswith("2 not started")


def test_report_shows_the_missing_runs(commands):
    code, out, _ = commands["--report"]
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0].startswith("run,") and len(rows) == 3 and all(",missing," in row for row in rows[1:])


def test_help_lists_every_option(commands):
    code, out, heavy = commands["--help"]
    assert code == 0 and not heavy
    for option in ("--plan", "--set", "--dry-run", "--rerun", "--report", "--status", "--pivot", "--launcher"):
        assert option in out
    assert "--slurm-partition" in out and "--num-parallel" in out and "Exit status" in out


@pytest.mark.parametrize("command", ["--dry-run", "--status", "--report"])
def test_no_heavy_import(commands, command):
    assert commands[command][2] == []
