"""Refactors keep what a plan means: every shipped plan (the reference's plan files among them)
expands to the same runs with the same config hashes, and every field keeps its default, so
finished runs are still reused. A change that is meant to alter either regenerates the golden file
(`python tests/test_plan_golden.py`) and says why in its commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOLDEN = Path(__file__).parent / "golden" / "plan_expansions.json"


def expansions() -> dict:
    from rm_exps.config import RunConfig
    from rm_exps.plan import expand_configs, format_strings, load_plan

    plans = {}
    for path in sorted((ROOT / "experiment_plans").rglob("*.json")):
        plan = load_plan(path)
        if "configurations" not in plan:
            continue
        runs = []
        for raw in expand_configs(plan):
            config = RunConfig.model_validate(format_strings(raw))
            runs.append(
                {"experiment_name": config.experiment_name, "objective": config.objective, "config_hash": config.hash()}
            )
        plans[str(path.relative_to(ROOT))] = runs
    defaults = json.loads(json.dumps(RunConfig().flat(), default=str))
    return {"defaults": defaults, "plans": plans}


def test_every_shipped_plan_expands_to_the_same_runs_and_hashes():
    golden = json.loads(GOLDEN.read_text())
    now = expansions()
    assert now["plans"].keys() == golden["plans"].keys()
    for plan, runs in golden["plans"].items():
        assert now["plans"][plan] == runs, plan


def test_every_field_keeps_its_default():
    golden = json.loads(GOLDEN.read_text())["defaults"]
    from rm_exps.config import RunConfig

    flat = json.loads(json.dumps(RunConfig().flat(), default=str))
    assert flat == golden


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(expansions(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
