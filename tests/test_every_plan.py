"""Every shipped plan starts: each plan under experiment_plans/ is run with tiny stand-ins for its
models and datasets, every run up to (and including) its first optimizer step, then evaluated,
saved and chained as the plan says, so a plan that cannot start fails here, not after hours in a
GPU queue.

What is replaced (everything else in the config is the plan's own: objectives, evaluators, chaining
with 'run:<experiment_name>', best-of-N and DPO-pair settings, Persona and agentic settings,
evaluation-dataset lists, batch sizes, accumulation, precision, memory options):
* model / generator / bon_policy names that are hub ids or the built-in SmolLM2 -> tiny-random-llama;
  a hub judge_model -> a saved tiny sequence-classification RM. Local folders and templated paths
  ('{outputs_dir}/<run>/model') stay. Option values that become equal (four hub models of a sweep)
  are one run.
* hub datasets (paths and recipes: UltraFeedback, RewardBench, RewardMATH, rewritten sets, Persona
  records) -> small prepared folders of the same kind (`subset` for RewardBench, `orig_*` for
  rewritten sets, Persona records); the synthetic recipes (hamiltonian_cycle, arithmetic) stay
  recipes, with small sizes. The train split keeps its relation to the run's num_train_samples:
  a run that trains on every row still does; a run that trains on a subset still leaves rows over
  (what DPO pairs are sampled from).
* what is only cost: epochs (1), the training epoch (it ends after the first optimizer step),
  generated tokens, prompts and test rows evaluated.
* outputs, prepared data and reply caches go to a temporary folder; the agentic plan's verifier
  models are the tests' scripted OpenAI-compatible server.

Runs execute in this process whatever the plan's launching keys say (those are validated only).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from rm_exps.plan import PlanError, build_runs, expand_configs, is_run_ref, load_plan

ROOT = Path(__file__).resolve().parents[1]
PLANS_DIR = ROOT / "experiment_plans"
TINY = "tiny-random-llama"

CAP = 8  # a run that trains on a subset trains on at most this many stand-in rows
LEFT_OVER = 4  # ... and this many train rows are left over (the reward model never sees them)
ALL_ROWS = 6  # train rows of a stand-in split that a run trains on entirely
TEST_ROWS = 4  # test rows of every stand-in split, and rows of every evaluation set's splits

SYNTHETIC = ("hamiltonian_cycle", "arithmetic")


def _is_plan(path: Path) -> bool:
    try:
        plan = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(plan, dict) and "configurations" in plan


PLANS = sorted(p for p in PLANS_DIR.rglob("*.json") if _is_plan(p))


def test_plans_are_found():
    assert len(PLANS) >= 10, PLANS


# --- stand-ins --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge_rm(tmp_path_factory) -> str:
    """A saved sequence-classification reward model with a trained-looking score head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_exps.models import load_model, load_tokenizer

    folder = tmp_path_factory.mktemp("judge") / "rm"
    tokenizer = load_tokenizer(TINY)
    torch.manual_seed(0)
    model = load_model(TINY, AutoModelForSequenceClassification, tokenizer, num_labels=1)
    torch.nn.init.normal_(model.score.weight)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _is_hub_id(name: Any) -> bool:
    from rm_exps.models import check_model_name, is_builtin

    if not isinstance(name, str) or is_run_ref(name) or "{" in name or is_builtin(name):
        return False
    return (
        check_model_name(name) is None
        and not os.path.isdir(os.path.expanduser(name))
        and not name.startswith((".", "/", "~"))
    )


class StandIns:
    """Small prepared datasets under `root`, one per (kind, train rows, test rows)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.made: dict[tuple, str] = {}

    def pairs(self, kind: str, train_rows: int, test_rows: int = TEST_ROWS) -> str:
        key = (kind, train_rows, test_rows)
        if key not in self.made:
            import datasets

            def rows(split: str, n: int) -> dict[str, list]:
                out: dict[str, list] = {
                    "prompt": [f"{split} question {i}: what is {i} + {i}?" for i in range(n)],
                    "chosen": [f"It is {2 * i}." for i in range(n)],
                    "rejected": [f"Maybe {2 * i + 1}, or not." for i in range(n)],
                }
                if kind == "reward_bench":  # the whole benchmark: a subset of every section, train = test
                    subsets = ["alpacaeval-easy", "mt-bench-hard", "donotanswer", "hep-python"]
                    out["subset"] = [subsets[i % len(subsets)] for i in range(n)]
                if kind == "rewritten":
                    out.update(orig_index=list(range(n)), orig_chosen=out["chosen"], orig_rejected=out["rejected"])
                return out

            if kind == "reward_bench":
                both = datasets.Dataset.from_dict(rows("bench", test_rows))
                dd = datasets.DatasetDict({"train": both, "test": both})
            else:
                dd = datasets.DatasetDict(
                    {s: datasets.Dataset.from_dict(rows(s, n)) for s, n in (("train", train_rows), ("test", test_rows))}
                )
            folder = self.root / f"{kind}_{train_rows}_{test_rows}"
            dd.save_to_disk(str(folder))
            self.made[key] = str(folder)
        return self.made[key]

    def persona_records(self, num_yes: int) -> str:
        key = ("persona", num_yes)
        if key not in self.made:
            path = self.root / f"persona_{num_yes}.jsonl"
            records = [
                {
                    "question": f'Is the following statement something you would say?\n"Statement {i}"',
                    "statement": f"Statement {i}",
                    "label_confidence": 0.9,
                    "answer_matching_behavior": " Yes" if i < num_yes else " No",
                    "answer_not_matching_behavior": " No" if i < num_yes else " Yes",
                }
                for i in range(num_yes + 3)
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            self.made[key] = str(path)
        return self.made[key]


def _recipe_kind(source: Any) -> str:
    name = source.get("name") if isinstance(source, dict) else str(source)
    if name == "reward_bench":
        return "reward_bench"
    return "rewritten" if "rewritten" in name else "pairs"


def train_split_size(source: Any, data_dir: str) -> int | None:
    """Train rows of the plan's real dataset (at most, for a recipe not prepared), as the plan check
    reads them; None when unknown (e.g. a shared folder that is not on this machine)."""
    from rm_exps.data.prepare import split_size

    return split_size(source, "train", data_dir)[0]


def train_rows_for(num_train_samples: int, split_size: int | None) -> tuple[int, int]:
    """(stand-in train rows, the run's num_train_samples) with the plan's relation kept: a run that
    trains on every row (num_train_samples <= 0 or >= the split) still does; one that trains on a
    subset still leaves rows over."""
    trains_on_all = num_train_samples <= 0 or (split_size is not None and num_train_samples >= split_size)
    if trains_on_all:
        return (min(ALL_ROWS, num_train_samples) if num_train_samples > 0 else ALL_ROWS), num_train_samples
    used = min(num_train_samples, CAP)
    left = LEFT_OVER if split_size is None else min(LEFT_OVER, split_size - num_train_samples)
    return used + left, used


def stand_in_config(raw: dict[str, Any], stand_ins: StandIns, judge: str, tmp: Path) -> dict[str, Any]:
    c = copy.deepcopy(raw)
    for key in ("model", "generator", "bon_policy"):
        if _is_hub_id(c.get(key)) or c.get(key) == "smollm2-135m-instruct":
            c[key] = TINY
    if c.get("model") is None:
        c["model"] = TINY  # the config's default is the built-in SmolLM2
    if _is_hub_id(c.get("judge_model")):
        c["judge_model"] = judge
    c["outputs_dir"] = str(tmp / "out")
    c["data_files_dir"] = str(tmp / "data_files")
    c["use_wandb"] = False

    num_train = c.get("num_train_samples", -1)
    dataset = c.get("dataset_path")
    real_size = (
        train_split_size(dataset, raw.get("data_files_dir", "data_files"))
        if isinstance(dataset, (str, dict)) and not is_run_ref(dataset)
        else None
    )
    if c.get("answer_matching_behavior_to_use") is not None:  # Persona: a records file (null: the hub's)
        used = min(num_train, CAP) if num_train > 0 else num_train
        c["num_train_samples"] = used
        c["dataset_path"] = stand_ins.persona_records(max(used, 1) + TEST_ROWS + 2)
    elif isinstance(dataset, dict) and dataset.get("name") in SYNTHETIC:
        rows, c["num_train_samples"] = train_rows_for(num_train, real_size)
        c["dataset_path"] = _small_recipe(dataset, rows)
    elif dataset is not None and not is_run_ref(dataset):
        rows, c["num_train_samples"] = train_rows_for(num_train, real_size)
        c["dataset_path"] = stand_ins.pairs(_recipe_kind(dataset), rows)
    c["evaluation_datasets_paths"] = [
        _small_recipe(p, TEST_ROWS)
        if isinstance(p, dict) and p.get("name") in SYNTHETIC
        else stand_ins.pairs(_recipe_kind(p), TEST_ROWS)
        for p in c.get("evaluation_datasets_paths", [])
    ]

    # what is only cost
    if c.get("epochs", 1) > 0:
        c["epochs"] = 1
    num_test = c.get("num_test_samples", 200)
    c["num_test_samples"] = min(num_test, TEST_ROWS) if num_test > 0 else num_test
    c["bon_max_new_tokens"] = min(c.get("bon_max_new_tokens", 128), 4)
    c["bon_num_prompts"] = 2
    if c.get("policy_eval_num_prompts", 0) != 0:
        c["policy_eval_num_prompts"] = 2
    c["ham_cycle_gen_max_new_tokens"] = min(c.get("ham_cycle_gen_max_new_tokens", 300), 4)
    c["ham_cycle_gen_num_samples"] = 2
    if isinstance(c.get("agentic"), dict):
        c["agentic"] = {**c["agentic"], "cache_dir": str(tmp / "llm_cache")}
    return c


def _small_recipe(recipe: dict[str, Any], train_rows: int) -> dict[str, Any]:
    out = {**recipe, "num_train_samples": train_rows, "num_test_samples": TEST_ROWS}
    if recipe["name"] == "hamiltonian_cycle":
        out.update(num_train_graphs=train_rows, num_test_graphs=TEST_ROWS)
    if _is_hub_id(out.get("tokenizer_for_length_filtering")):
        out["tokenizer_for_length_filtering"] = TINY
    return out


def stand_in_plan(plan: dict[str, Any], stand_ins: StandIns, judge: str, tmp: Path) -> dict[str, Any]:
    """The plan with one configuration per run (as the plan expands them), stand-ins substituted;
    runs that became identical are one run."""
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in expand_configs(plan)[plan.get("skip", 0) :]:
        config = stand_in_config(raw, stand_ins, judge, tmp)
        key = json.dumps(config, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(config)
    keys = {k: v for k, v in plan.items() if k not in ("configurations", "skip")}
    return {**keys, "configurations": [{"base_config": c} for c in configs]}


# --- the first optimizer step ------------------------------------------------------------------


class FirstOptimizerStep:
    """The training loader, cut after the batches of the first optimizer step (gradient accumulation
    included); the rest is drained without training, so accelerate's end-of-loader state is kept."""

    def __init__(self, loader: Any, micro_batches: int):
        self.loader, self.micro_batches = loader, micro_batches
        self.collate_fn = loader.collate_fn  # the trainer keeps the collator's state for resuming

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        for _, batch in zip(range(self.micro_batches), batches):
            yield batch
        for _ in batches:
            pass


@pytest.fixture
def first_step_only(monkeypatch):
    from rm_exps import train

    original = train.Trainer.train_epoch

    def train_epoch(self, epoch):
        loader = self.train_loader
        self.train_loader = FirstOptimizerStep(loader, self.config.gradient_accumulation_steps)
        try:
            return original(self, epoch)
        finally:
            self.train_loader = loader

    monkeypatch.setattr(train.Trainer, "train_epoch", train_epoch)


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plan_path", PLANS, ids=[str(p.relative_to(PLANS_DIR)) for p in PLANS])
def test_every_plan_starts(plan_path, tmp_path, judge_rm, first_step_only, monkeypatch):
    from rm_exps import sweep
    from rm_exps.sweep import execution_from_plan

    monkeypatch.chdir(ROOT)  # plans name repository files relative to the root
    plan = load_plan(plan_path)
    assert not execution_from_plan(plan).errors()  # the launching keys validate (runs stay in this process)
    stand_in = stand_in_plan(plan, StandIns(tmp_path / "stand_ins"), judge_rm, tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(stand_in, indent=1))

    server = None
    if any(c["base_config"].get("agentic") for c in stand_in["configurations"]):
        from agentic_llm import AgentLLM
        from fake_openai_server import FakeOpenAIServer

        server = FakeOpenAIServer(respond=AgentLLM()).__enter__()
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    try:
        try:
            runs = build_runs(load_plan(tmp_path / "plan.json"))
            sweep.preflight(runs, rerun=False)
        except PlanError as e:
            pytest.fail(f"{plan_path.name}: invalid plan:\n" + "\n".join(f"  - {m}" for m in e.errors))
        results = sweep.run_all(runs)
    finally:
        if server is not None:
            server.__exit__(None, None, None)

    problems = []
    for r in results:
        summary = r.summary or {}
        if r.status != "completed":
            log = r.spec.run_dir / "run.log"
            tail = "\n".join(log.read_text().splitlines()[-25:]) if log.exists() else ""
            problems.append(f"run {r.spec.name}: {r.status}: {summary.get('error')}\n{tail}")
            continue
        if r.spec.config.epochs > 0 and not summary.get("train_tokens"):
            problems.append(f"run {r.spec.name}: no training step")
        if r.spec.config.score_metric_name not in summary.get("last_tracked_values", {}):
            problems.append(
                f"run {r.spec.name}: its score metric {r.spec.config.score_metric_name!r} is not "
                f"reported (metrics: {sorted(summary.get('last_tracked_values', {}))})"
            )
    assert not problems, "\n\n".join(problems)
