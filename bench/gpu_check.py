"""One command that checks rm_exps on one CUDA GPU, offline, in a few minutes; PASS/FAIL per check.

Why: the project is developed and tested on CPUs only. This is the check to run once a GPU is at
hand: every objective trains in bf16 mixed precision through the real code path (`run_plan.main`
on a one-run plan), on a random model of SmolLM2-135M's shape (no download), and its numbers are
compared with an fp32 run of the same steps.

    python bench/gpu_check.py                        # on the GPU box (default budget 480 s)
    python bench/gpu_check.py --json out.json --budget-s 400
    python bench/gpu_check.py --allow-cpu --tiny     # the logic on a CPU, tiny model (tests/test_gpu_check.py)

Checks, in this order (a check starts only while --budget-s is not spent; later ones are reported
as skipped):

  packages            the wheels the code path imports (missing ones named, with how to carry them)
  device              a CUDA GPU (without one: exit 1, unless --allow-cpu)
  model               a random SmolLM2-135M-shaped Llama + a locally built byte-level tokenizer with
                      a chat template, saved to a folder that every plan's `model` points at
  train/<objective>   8 optimizer steps (tiny: 2) in bf16 mixed and in fp32, one run each: both
                      complete, losses/rewards agree within bf16 tolerance (and are not identical:
                      autocast ran), the bf16 run's saved weights moved from the initial ones;
                      IM-RM/DPO start at reward 0 (the reference is the initial policy)
  share_prompt/<obj>  ex_rm, im_rm, sft with `share_prompt: true` against the unshared fp32 run:
                      losses/rewards equal within float tolerance (the CUDA attention kernel's)
  zero3               ex_rm and im_rm under `accelerate launch --num_processes 1` with DeepSpeed
                      ZeRO-3 (bf16): DeepSpeed runs, gathered weights moved, IM-RM starts at 0;
                      skipped with the reason when deepspeed is not installed
  trl                 the same work (rows, batches, steps, bf16) through TRL's RewardTrainer and
                      DPOTrainer beside fresh-process rm_exps ex_rm / im_rm; skipped without trl

Then the table: train tokens/s, peak memory (CUDA max allocated; peak RSS on a CPU) and eval
pairs/s per objective (the bf16 runs), the ZeRO-3 runs and the TRL comparison. Everything goes to --json (default
$OUT/gpu_check.json when $OUT is set, else ./gpu_check.json). Exit 0 only if every check passed;
the only skips that do not fail are a missing optional package (deepspeed, trl) and --skip.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("ex_rm", "im_rm", "gen_rm", "sft", "icrm", "dpo", "gram_pretrain", "gram_judge")
SHARE_PROMPT_OBJECTIVES = ("ex_rm", "im_rm", "sft")  # the objectives that take `share_prompt`
OPTIONAL_CHECKS = ("share_prompt", "zero3", "trl")  # what --skip may name
# share_prompt is on by default: unshared train time / shared train time must be at least this (timing noise of
# one short run allowed for)
SHARED_MIN_SPEEDUP = 0.9
MIN_TIMED_S = 5.0  # shorter training runs are timing noise
ZERO3_CONFIG = REPO / "experiment_plans" / "accelerate_configs" / "deepspeed_zero3_bf16.yaml"
RESULT_PREFIX = "GPU_CHECK_RESULT "  # marks a child's JSON line on its stdout

# Imported by the code path this script runs (run_plan -> rm_exps.run, config, data, objectives),
# import name -> pip name. torch, transformers, accelerate (and peft, used only with LoRA) are the
# GPU image's own; the others are what an offline GPU box may lack (docs/PERFORMANCE.md, "GPU check").
REQUIRED_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface-hub",
    "filelock": "filelock",
    "numpy": "numpy",
    "yaml": "pyyaml",
    "jinja2": "jinja2",
    "regex": "regex",
    "tqdm": "tqdm",
    "psutil": "psutil",
    "fsspec": "fsspec",
    # rm_exps.config
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    # rm_exps.run, rm_exps.data (datasets and what it imports)
    "datasets": "datasets",
    "pyarrow": "pyarrow",
    "dill": "dill",
    "multiprocess": "multiprocess",
    "xxhash": "xxhash",
    "pandas": "pandas",
    "dateutil": "python-dateutil",
    "six": "six",
}
OPTIONAL_PACKAGES = {"deepspeed": "the zero3 check", "trl": "the trl comparison"}

# SmolLM2-135M-Instruct's hyperparameters (its config.json), and a tiny shape for the CPU smoke test.
SHAPES = {
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.041666666666666664,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}

# Tolerances. bf16 keeps 8 bits of mantissa. Through the 30 layers of the SmolLM2 shape (measured
# on a CPU: batches of 2 pairs, 8 steps), bf16 and fp32 rewards were up to 3% of their scale apart
# before any update, and a Bradley-Terry loss (a function of reward differences) 2.7% of itself:
# 10%, about 3x that. Log-probs are summed in fp32 from bf16 logits: an implicit reward must hold
# to 1e-3 of kl * |log pi|, 4x below bf16's own rounding (log-probs summed in bf16 would fail it).
# Two fp32 computations of the same values (share_prompt's layout) only reorder float sums: 1e-3
# relative, 1e-5 of kl * |log pi|.
BF16_RTOL, BF16_LOGP_RTOL = 0.1, 1e-3
FP32_RTOL, FP32_LOGP_RTOL = 1e-3, 1e-5
# The ZeRO-3 checkpoint is gathered in bf16 (zero3_save_16bit_model), where a weight of ~0.04 moves
# only by more than half a bf16 ulp (~1.2e-4): its runs take Adam steps of 1e-3.
ZERO3_LR = 1e-3


@dataclass
class Settings:
    """The work of every run: the same rows, batches and steps for every objective and precision."""

    shape: str
    steps: int
    batch_size: int
    eval_batch_size: int
    num_eval: int
    lr: float
    prompt_chars: tuple[int, int]
    response_chars: tuple[int, int]

    @property
    def num_train(self) -> int:
        return self.steps * self.batch_size


def settings_for(args: argparse.Namespace) -> Settings:
    if args.tiny:
        return Settings(
            "tiny",
            steps=args.steps or 2,
            batch_size=2,
            eval_batch_size=4,
            num_eval=4,
            lr=1e-5,
            prompt_chars=(20, 60),
            response_chars=(10, 40),
        )
    return Settings(
        "smollm2-135m",
        steps=args.steps or 8,
        batch_size=8,
        eval_batch_size=16,
        num_eval=64,
        lr=1e-5,
        prompt_chars=(150, 600),
        response_chars=(100, 500),
    )


# --- checks ------------------------------------------------------------------------------------


class Skip(Exception):
    """A check that cannot run here (a missing optional package): reported, not a failure."""


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    reason: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    allowed: bool = True  # a SKIP that does not fail the whole check (missing optional package, --skip)


class Suite:
    """Runs named checks in order under the time budget and records each outcome."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.checks: list[Check] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def run(self, name: str, fn: Callable[[], tuple[bool, str, dict[str, Any]]]) -> Check:
        """fn() -> (ok, reason, details); raising Skip skips it, any other exception fails it."""
        if self.remaining() <= 0:
            return self.record(
                Check(name, "SKIP", f"budget of {self.budget_s:.0f} s spent before it started", allowed=False)
            )
        start = time.monotonic()
        print(f"--- {name} ...", flush=True)
        try:
            ok, reason, details = fn()
            check = Check(name, "PASS" if ok else "FAIL", reason, details=details)
        except Skip as e:
            check = Check(name, "SKIP", str(e))
        except Exception as e:  # a broken check is a failed check, and the others still run
            check = Check(
                name,
                "FAIL",
                f"{type(e).__name__}: {e}".splitlines()[0],
                details={"traceback": traceback.format_exc()[-4000:]},
            )
        check.seconds = round(time.monotonic() - start, 1)
        return self.record(check)

    def record(self, check: Check) -> Check:
        self.checks.append(check)
        print(f"{check.status} {check.name} ({check.seconds:.1f} s): {check.reason}", flush=True)
        return check

    def skip(self, name: str, reason: str) -> Check:
        return self.record(Check(name, "SKIP", reason))

    @property
    def passed(self) -> bool:
        return all(c.status == "PASS" or (c.status == "SKIP" and c.allowed) for c in self.checks)


def compare(a: float, b: float, rtol: float, atol: float = 0.0) -> tuple[bool, float]:
    """|a - b| <= max(rtol * max(|a|, |b|), atol); also the deviation in units of that tolerance."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return False, math.inf
    tolerance = max(rtol * max(abs(a), abs(b)), atol)
    diff = abs(a - b)
    return diff <= tolerance, (diff / tolerance if tolerance else (0.0 if diff == 0 else math.inf))


LOSS_SUFFIXES = (" loss", " chosen logprobs", " rejected logprobs")
REWARD_SUFFIXES = (" chosen reward", " rejected reward", " chosen rewards", " rejected rewards", " verdict prob")
IMPLICIT_REWARDS = ("im_rm", "dpo")  # reward = kl_coeff * (log pi - log pi_ref)


def compared_metrics(run: Run) -> dict[str, float]:
    """The continuous metrics worth comparing across precisions or layouts: losses, log-probs and
    rewards, final and of the first training step (computed before any update, so they differ only
    by arithmetic). Accuracies and rates jump by a whole pair; margins are differences of near-equals."""
    metrics = {**run.values, **{f"first step {k}": v for k, v in run.first_step.items()}}
    return {k: v for k, v in metrics.items() if k.endswith(LOSS_SUFFIXES + REWARD_SUFFIXES)}


def compare_runs(a: Run, b: Run, rtol: float, reward_atol: float) -> tuple[list[str], dict[str, Any]]:
    """Every compared metric of two runs, each within `rtol` of itself; a reward also passes within
    `reward_atol` (a mean reward near 0 has no relative precision of its own: see reward_tolerance).
    Returns the names out of tolerance, and every pair with its deviation (1.0 = at the tolerance)."""
    left, right = compared_metrics(a), compared_metrics(b)
    bad, table = [], {}
    for name in sorted(set(left) & set(right)):
        ok, dev = compare(left[name], right[name], rtol, reward_atol if name.endswith(REWARD_SUFFIXES) else 0.0)
        table[name] = {"a": left[name], "b": right[name], "deviation": round(dev, 4), "ok": ok}
        if not ok:
            bad.append(name)
    if not table:
        bad.append("no metric in common")
    return bad, table


def reward_tolerance(work: Work, objective: str, runs: tuple[Run, Run], rtol: float, logp_rtol: float) -> float:
    """The absolute tolerance of a mean reward, on the scale it is computed from. An explicit reward
    (value head, Yes/verdict probability): `rtol` of the largest reward magnitude of the two runs.
    An implicit one, kl * (log pi - log pi_ref), is the difference of two sums of response
    log-probs: `logp_rtol` of kl * |log pi| (implicit_reward_scale)."""
    if objective in IMPLICIT_REWARDS:
        return logp_rtol * implicit_reward_scale(work)
    return rtol * max(
        (abs(v) for run in runs for k, v in compared_metrics(run).items() if k.endswith(REWARD_SUFFIXES)), default=0.0
    )


def implicit_reward_scale(work: Work) -> float:
    """kl * |log pi|, |log pi| being the larger mean response log-prob (chosen, rejected) of the sft
    fp32 run on the same test pairs (run here if it was not)."""
    sft = work.run("sft_fp32", "sft", "fp32")
    if not sft.ok:
        raise RuntimeError(f"the log-prob scale of the implicit rewards comes from {sft.why_not()}")
    return work.kl_coeff * max(abs(sft.values[f"eval test {side} logprobs"]) for side in ("chosen", "rejected"))


def nonzero_start(run: Run, atol: float) -> str | None:
    """IM-RM/DPO: the first step's rewards, before any update, are 0 up to `atol` (the reference is
    the initial policy, computed in the same precision); what is wrong otherwise."""
    start = [run.first_step.get(f"train {side} rewards", math.inf) for side in ("chosen", "rejected")]
    if max(abs(v) for v in start) > atol:
        return f"{run.name} first-step rewards {start} are not 0 (within {atol:.2g}): reference != initial policy"
    return None


# --- the work: a model folder and a preference dataset ---------------------------------------


def build_model_folder(folder: Path, shape: str) -> dict[str, Any]:
    """A random-initialised Llama of the shape, with the byte-level tokenizer rm_exps builds for its
    tiny test models (models._tiny_tokenizer: Yes/No merged into single tokens for gen_rm) after the
    usual fix-ups (pad token, role tokens, chat template), saved with save_pretrained. Every run
    loads it by path, so the real loading code runs; nothing is downloaded."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rm_exps.models import _tiny_tokenizer, fix_tokenizer

    tokenizer = fix_tokenizer(_tiny_tokenizer())
    arch = dict(SHAPES[shape])
    tokenizer.model_max_length = arch["max_position_embeddings"]
    eos = tokenizer.eos_token_id
    config = LlamaConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_size": len(tokenizer),
        "shape": arch,
        "folder": str(folder),
    }


WORDS = (
    "the",
    "model",
    "reward",
    "answer",
    "question",
    "because",
    "first",
    "then",
    "value",
    "number",
    "step",
    "check",
    "result",
    "simple",
    "clear",
    "short",
    "long",
    "careful",
    "explain",
    "true",
    "false",
    "sum",
)


def filler(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def write_dataset(folder: Path, settings: Settings, seed: int = 0) -> dict[str, int]:
    """Synthetic arithmetic preference pairs (the chosen answer is right, the rejected one off by
    one), padded with words to varied lengths, as train.jsonl / test.jsonl."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": settings.num_train, "test": settings.num_eval}
    for split, n in sizes.items():
        rows = []
        for _ in range(n):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            prompt = f"What is {a} plus {b}? {filler(rng, rng.randint(*settings.prompt_chars))}"
            chosen = f"It is {a + b}. {filler(rng, rng.randint(*settings.response_chars))}"
            rejected = f"It is {a + b + 1}. {filler(rng, rng.randint(*settings.response_chars))}"
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return sizes


# --- rm_exps runs ------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished rm_exps run: its summary, final metric values and first training step's metrics."""

    name: str
    folder: Path
    summary: dict[str, Any]
    values: dict[str, float]
    first_step: dict[str, float]

    @property
    def ok(self) -> bool:
        return self.summary.get("status") == "completed"

    def why_not(self) -> str:
        return f"run {self.name} {self.summary.get('status')}: {self.summary.get('error', '(no error recorded)')}"


class Work:
    """The shared folders of a check: model, data, plans, outputs, logs; and the run configs."""

    def __init__(self, root: Path, settings: Settings):
        self.root, self.settings = root, settings
        self.model = root / "model"
        self.data = root / "data"
        self.outputs = root / "outputs"
        self.logs = root / "logs"
        for folder in (self.outputs, self.logs, root / "plans"):
            folder.mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, Run] = {}
        self.kl_coeff = 0.01  # im_rm / dpo beta (rm_exps' default), also TRL's DPO beta here

    def config(self, name: str, objective: str, precision: str, **fields: Any) -> dict[str, Any]:
        s = self.settings
        config: dict[str, Any] = {
            "experiment_name": name,
            "model": str(self.model),
            "objective": objective,
            "precision": precision,
            "dataset_path": str(self.data),
            "outputs_dir": str(self.outputs),
            "data_files_dir": str(self.root / "data_files"),
            "num_train_samples": -1,
            "num_test_samples": s.num_eval,
            "eval_train_subset": False,
            "epochs": 1,
            "batch_size": s.batch_size,
            "eval_batch_size": s.eval_batch_size,
            "lr": s.lr,
            "random_seed": 0,
            "train_batch_log_interval": 1,
            "kl_coeff": self.kl_coeff,
            "disable_console_log": True,
            "share_prompt": False,  # precision checks: one row per sequence; share_prompt/<obj> compares the two
        }
        if objective == "icrm":
            config["generator"] = str(self.model)  # the frozen generator: the same random model
        if objective == "gram_pretrain":  # it ranks nothing: scored by its loss
            config.update(score_metric_name="eval test loss", score_largest=False)
        config.update(fields)
        return config

    def plan(self, name: str, configs: list[dict[str, Any]]) -> Path:
        path = self.root / "plans" / f"{name}.json"
        path.write_text(json.dumps({"name": name, "configurations": [{"base_config": c} for c in configs]}, indent=1))
        return path

    def read_run(self, name: str) -> Run:
        folder = self.outputs / name
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"status": "missing"}
        values = {
            k: v["value"]
            for k, v in summary.get("last_tracked_values", {}).items()
            if isinstance(v.get("value"), (int, float))
        }
        first: dict[str, float] = {}
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                if record.get("kind") == "train_batch":
                    first = {k: v for k, v in record.items() if k.startswith("train ")}
                    break
        return Run(name, folder, summary, values, first)

    def run(self, name: str, objective: str, precision: str, **fields: Any) -> Run:
        """One run through run_plan.main in this process (its console table goes to logs/<name>.out)."""
        import run_plan

        if name in self.runs:
            return self.runs[name]
        plan = self.plan(name, [self.config(name, objective, precision, **fields)])
        with open(self.logs / f"{name}.out", "w") as out, contextlib.redirect_stdout(out):
            run_plan.main(["--plan", str(plan)])
        release_memory()
        run = self.runs[name] = self.read_run(name)
        s = run.summary
        print(
            f"    {name}: {s.get('status')}, train {s.get('train_s')} s, eval {s.get('eval_s')} s, "
            f"{s.get('train_tokens_per_s')} tok/s, peak {s.get('peak_mem_mb')} MB",
            flush=True,
        )
        return run


def release_memory() -> None:
    """Free what a finished run left behind, so the next run's peak memory is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    return weights


def weights_moved(initial: dict[str, Any], saved_folder: Path) -> dict[str, Any]:
    """Share of the entries that changed, over the weights both checkpoints hold (a
    sequence-classification model has `score` instead of the LM head), the input embeddings left
    out (rows of tokens absent from the data get no gradient)."""
    saved = load_weights(saved_folder)
    names = [n for n in initial if "embed_tokens" not in n and n in saved]
    moved = total = 0
    unchanged = []
    for name in names:
        new = saved[name]
        old = initial[name].to(new.dtype)  # a bf16 checkpoint: against the start rounded to bf16
        changed = int((new[: old.shape[0]] != old).sum())  # rows a grown vocabulary added come last
        moved, total = moved + changed, total + old.numel()
        if changed == 0:
            unchanged.append(name)
    return {
        "fraction_moved": moved / total if total else 0.0,
        "tensors_compared": len(names),
        "unchanged_tensors": unchanged[:10],
    }


# --- the checks --------------------------------------------------------------------------------


def check_packages() -> tuple[bool, str, dict[str, Any]]:
    missing = {name: pip for name, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(name) is None}
    optional = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_PACKAGES}
    details = {"missing": sorted(set(missing.values())), "optional_present": optional}
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        return (
            False,
            (
                f"missing {pkgs}: carry their wheels (docs/PERFORMANCE.md, 'GPU check'): on a machine with "
                f"PyPI `pip download --no-deps --only-binary :all: --python-version 3.11 --platform "
                f"manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels/ {pkgs}`, "
                f"here `pip install --no-index --find-links wheels/ {pkgs}`"
            ),
            details,
        )
    absent = [f"{name} (for {what})" for name, what in OPTIONAL_PACKAGES.items() if not optional[name]]
    return True, "all required packages import" + (f"; not installed: {', '.join(absent)}" if absent else ""), details


def check_model(work: Work) -> tuple[bool, str, dict[str, Any]]:
    model = build_model_folder(work.model, work.settings.shape)
    sizes = write_dataset(work.data, work.settings)
    return (
        True,
        (
            f"{work.settings.shape}: {model['parameters']:,} parameters, tokenizer of {model['tokenizer_size']} "
            f"tokens; {sizes['train']} train / {sizes['test']} test pairs"
        ),
        {"model": model, "pairs": sizes},
    )


def device_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            gpu_memory_mb=round(props.total_memory / 2**20),
            bf16_supported=torch.cuda.is_bf16_supported(),
            flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
            mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
        )
    return info


NO_GPU_MESSAGE = (
    "no CUDA GPU: torch.cuda.is_available() is False. This check needs one GPU. "
    "To test its logic on a CPU run: python bench/gpu_check.py --allow-cpu --tiny"
)


def check_train(work: Work, objective: str, initial: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    """bf16 mixed vs fp32, same steps: both complete; values within bf16 tolerance, not identical;
    the bf16 run's weights moved; IM-RM/DPO first-step rewards are 0."""
    bf16 = work.run(f"{objective}_bf16", objective, "bf16", save_model=True)
    fp32 = work.run(f"{objective}_fp32", objective, "fp32")
    for run in (bf16, fp32):
        if not run.ok:
            return False, run.why_not(), {}
    problems = []
    if bf16.summary["environment"].get("precision") != "bf16":
        problems.append(f"bf16 run recorded precision {bf16.summary['environment'].get('precision')}")
    atol = reward_tolerance(work, objective, (bf16, fp32), BF16_RTOL, BF16_LOGP_RTOL)
    bad, table = compare_runs(bf16, fp32, BF16_RTOL, atol)
    if bad:
        problems.append(
            f"bf16 vs fp32 out of tolerance (rtol {BF16_RTOL}, rewards {atol:.2g}): "
            + ", ".join(f"{n} {table[n]['a']:.5g} vs {table[n]['b']:.5g}" if n in table else n for n in bad)
        )
    if table and all(v["a"] == v["b"] for v in table.values()):
        problems.append("bf16 and fp32 values are identical: autocast did not run")
    moved = weights_moved(initial, bf16.folder / "model")
    if moved["fraction_moved"] < 0.5:
        problems.append(f"only {moved['fraction_moved']:.1%} of the weights moved")
    if objective in IMPLICIT_REWARDS:
        scale = implicit_reward_scale(work)
        problems += filter(
            None, (nonzero_start(bf16, BF16_LOGP_RTOL * scale), nonzero_start(fp32, FP32_LOGP_RTOL * scale))
        )
    worst = max((v["deviation"] for v in table.values()), default=0.0)
    details = {"compared": table, "reward_atol": atol, "weights": moved, "bf16": figures(bf16), "fp32": figures(fp32)}
    if problems:
        return False, "; ".join(problems), details
    return (
        True,
        (
            f"{len(table)} values within tolerance (worst at {worst:.0%} of it), "
            f"{moved['fraction_moved']:.1%} of weights moved"
        ),
        details,
    )


def check_share_prompt(work: Work, objective: str) -> tuple[bool, str, dict[str, Any]]:
    """share_prompt: true against the unshared run, both fp32: same batches, same values."""
    unshared = work.run(f"{objective}_fp32", objective, "fp32")
    shared = work.run(f"{objective}_fp32_shared", objective, "fp32", share_prompt=True)
    for run in (unshared, shared):
        if not run.ok:
            return False, run.why_not(), {}
    atol = reward_tolerance(work, objective, (shared, unshared), FP32_RTOL, FP32_LOGP_RTOL)
    bad, table = compare_runs(shared, unshared, FP32_RTOL, atol)
    details = {
        "compared": table,
        "reward_atol": atol,
        "train_tokens": {"shared": shared.summary["train_tokens"], "unshared": unshared.summary["train_tokens"]},
    }
    if shared.summary["train_tokens"] >= unshared.summary["train_tokens"]:
        return False, "the shared layout did not feed fewer tokens (prompt not shared?)", details
    if bad:
        return (
            False,
            f"shared vs unshared out of tolerance (rtol {FP32_RTOL}, rewards {atol:.2g}): "
            + ", ".join(f"{n} {table[n]['a']:.6g} vs {table[n]['b']:.6g}" if n in table else n for n in bad),
            details,
        )
    worst = max(v["deviation"] for v in table.values())
    # share_prompt is the default: on this device it must not be slower than one row per sequence (a run
    # too short to time, such as the tiny CPU self-test, only reports the ratio)
    times = {"shared": shared.summary["train_s"], "unshared": unshared.summary["train_s"]}
    speed = times["unshared"] / max(times["shared"], 1e-9)
    details["train_s"] = times
    if min(times.values()) >= MIN_TIMED_S and speed < SHARED_MIN_SPEEDUP:
        return False, f"values agree, but the shared layout trained {1 / speed:.2f}x slower than unshared", details
    return True, f"{len(table)} values within tolerance (worst at {worst:.0%} of it), {speed:.2f}x the speed", details


def check_zero3(work: Work, initial: dict[str, Any], timeout_s: float) -> tuple[bool, str, dict[str, Any]]:
    """ex_rm and im_rm in one accelerate launch with the shipped ZeRO-3 bf16 config (parameters
    offloaded to the CPU), one process: both complete as DeepSpeed runs, save_model gathers weights
    that moved, IM-RM starts at reward 0 (its reference is the policy's parameters copied gather by
    gather). Losses are not compared with the fp32 run: the score head is initialised under
    zero.Init, and the steps are larger (ZERO3_LR)."""
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("deepspeed is not installed (docs/PERFORMANCE.md, 'GPU check': carry its sdist and deps)")
    names = {objective: f"{objective}_zero3" for objective in ("ex_rm", "im_rm")}
    plan = work.plan(
        "zero3",
        [work.config(name, objective, "bf16", save_model=True, lr=ZERO3_LR) for objective, name in names.items()],
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--config_file",
        str(ZERO3_CONFIG),
        str(REPO / "run_plan.py"),
        "--plan",
        str(plan),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code, log_path = run_child(cmd, work.logs / "zero3.log", timeout_s, env)
    details: dict[str, Any] = {"exit_status": code, "log": str(log_path)}
    problems = [] if code == 0 else [f"accelerate launch exited {code} (log {log_path}: {tail(log_path, 3)})"]
    for objective, name in names.items():
        run = work.runs[name] = work.read_run(name)
        details[name] = figures(run)
        if not run.ok:
            problems.append(run.why_not())
            continue
        if run.summary["environment"].get("distributed_type") != "DEEPSPEED":
            problems.append(f"{name} ran as {run.summary['environment'].get('distributed_type')}, not DEEPSPEED")
        moved = details[name]["weights"] = weights_moved(initial, run.folder / "model")
        if moved["fraction_moved"] < 0.5:
            problems.append(f"{name}: only {moved['fraction_moved']:.1%} of the gathered weights moved")
        if objective in IMPLICIT_REWARDS and (
            wrong := nonzero_start(run, BF16_LOGP_RTOL * implicit_reward_scale(work))
        ):
            problems.append(wrong)
    if problems:
        return False, "; ".join(problems), details
    return True, "ex_rm and im_rm completed under ZeRO-3; gathered weights moved; IM-RM starts at reward 0", details


def figures(run: Run) -> dict[str, Any]:
    """The throughput and memory figures of a run's summary (eval pairs/s over the test set)."""
    s = run.summary
    eval_pairs = s.get("num_test_samples") or 0
    return {
        "status": s.get("status"),
        "train_s": s.get("train_s"),
        "eval_s": s.get("eval_s"),
        "precompute_s": s.get("precompute_s"),
        "train_tokens": s.get("train_tokens"),
        "train_tokens_per_s": s.get("train_tokens_per_s"),
        "peak_mem_mb": s.get("peak_mem_mb"),
        "eval_pairs": eval_pairs,
        "eval_pairs_per_s": round(eval_pairs / s["eval_s"], 1) if s.get("eval_s") else None,
    }


# --- child processes (ZeRO-3 launch, TRL comparison) ------------------------------------------


def run_child(cmd: list[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None) -> tuple[int, Path]:
    """Run a command with stdout+stderr to `log_path`; its exit status (124 when it timed out)."""
    with log_path.open("w") as log:
        try:
            return subprocess.run(
                cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=max(timeout_s, 1)
            ).returncode, log_path
        except subprocess.TimeoutExpired:
            log.write(f"\n[gpu_check] killed after {timeout_s:.0f} s\n")
            return 124, log_path


def tail(path: Path, lines: int) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.exists() else ""


def child_result(log_path: Path) -> dict[str, Any] | None:
    lines = [
        line[len(RESULT_PREFIX) :]
        for line in log_path.read_text(errors="replace").splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    return json.loads(lines[-1]) if lines else None


TRL_CONTENDERS = {  # name -> (harness, objective)
    "rm_exps_ex_rm": ("rm_exps", "ex_rm"),
    "trl_reward": ("trl", "ex_rm"),
    "rm_exps_im_rm": ("rm_exps", "im_rm"),
    "trl_dpo": ("trl", "im_rm"),
}


def check_trl(work: Work, timeout_s: Callable[[], float]) -> tuple[bool, str, dict[str, Any]]:
    """Each contender in a fresh process (so first-step warm-up and peak memory are its own), the
    same rows, batches, one epoch, bf16: RewardTrainer beside rm_exps ex_rm, DPOTrainer (sigmoid,
    beta = kl_coeff, reference run on every batch) beside rm_exps im_rm (reference precomputed)."""
    if importlib.util.find_spec("trl") is None:
        raise Skip("trl is not installed (pip install -r bench/requirements.txt, or carry its wheel)")
    results, problems = {}, []
    for name, (harness, objective) in TRL_CONTENDERS.items():
        if timeout_s() <= 0:
            problems.append(f"{name}: budget spent before it started")
            continue
        config = work.config(f"trl_cmp_{name}", objective, "bf16", cache_reference_logps=False)
        spec = work.root / "plans" / f"{name}.child.json"
        spec.write_text(json.dumps({"harness": harness, "config": config}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)]
        code, log_path = run_child(cmd, work.logs / f"{name}.log", timeout_s() + 30)
        result = child_result(log_path)
        if code != 0 or result is None:
            problems.append(f"{name} exited {code} (log {log_path}: {tail(log_path, 3)})")
            continue
        results[name] = result
        print(
            f"    {name}: train {result['train_s']:.1f} s, {result['train_tokens_per_s']} tok/s, "
            f"peak {result['peak_mem_mb']:,.0f} MB, eval {result['eval_pairs_per_s']} pairs/s",
            flush=True,
        )
    ratios = {}
    for ours, theirs in (("rm_exps_ex_rm", "trl_reward"), ("rm_exps_im_rm", "trl_dpo")):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            ratios[f"{ours} / {theirs}"] = {
                "train_s": _ratio(a["train_s"], b["train_s"]),
                "work_s": _ratio(a["work_s"], b["work_s"]),
                "peak_mem_mb": _ratio(a["peak_mem_mb"], b["peak_mem_mb"]),
            }
    details = {"results": results, "ratios": ratios}
    if problems:
        return False, "; ".join(problems), details
    return (
        True,
        "; ".join(f"{k}: work {v['work_s']}x, peak memory {v['peak_mem_mb']}x" for k, v in ratios.items()),
        details,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def child_main(spec_path: str) -> None:
    """--child SPEC: one contender of the TRL comparison in this fresh process; prints its figures."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    sys.path[:0] = [str(REPO), str(REPO / "bench")]
    result = child_rm_exps(spec["config"]) if spec["harness"] == "rm_exps" else child_trl(spec["config"])
    result["work_s"] = round(result["train_s"] + result["eval_s"] + result.get("precompute_s", 0.0), 3)
    result["train_tokens_per_s"] = round(result["train_tokens"] / result["train_s"], 1) if result["train_s"] else None
    result["eval_pairs_per_s"] = round(result["eval_pairs"] / result["eval_s"], 1) if result["eval_s"] else None
    result["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if result["device"] == "cpu":  # this process's own peak (ru_maxrss would carry the parent's across exec)
        result["peak_mem_mb"] = vm_hwm_mb()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def child_rm_exps(config: dict[str, Any]) -> dict[str, Any]:
    import run_plan

    plan = Path(config["outputs_dir"]).parent / "plans" / f"{config['experiment_name']}.json"
    plan.write_text(json.dumps({"name": config["experiment_name"], "configurations": [{"base_config": config}]}))
    if run_plan.main(["--plan", str(plan)]) != 0:
        raise RuntimeError("the rm_exps run failed")
    s = json.loads((Path(config["outputs_dir"]) / config["experiment_name"] / "summary.json").read_text())
    return {
        "train_s": s["train_s"],
        "eval_s": s["eval_s"],
        "precompute_s": s["precompute_s"],
        "train_tokens": s["train_tokens"],
        "peak_mem_mb": s["peak_mem_mb"],
        "eval_pairs": s["num_test_samples"],
    }


def child_trl(config: dict[str, Any]) -> dict[str, Any]:
    """TRL on the rows rm_exps selects (its own subsampling code), in TRL's conversational format
    (TRL renders the same chat template), with rm_exps' batch sizes, lr, seed and precision."""
    import torch
    from bench_vs_trl import conversational, train_then_score, trl_accuracy
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from rm_exps.config import RunConfig
    from rm_exps.models import load_model, load_tokenizer
    from rm_exps.run_data import load_train_test

    run_config = RunConfig(**config)
    train, test = load_train_test(run_config)
    train, test = conversational(train), conversational(test)
    tokenizer = load_tokenizer(run_config.model)
    cuda = torch.cuda.is_available()
    set_seed(run_config.random_seed)
    with tempfile.TemporaryDirectory(prefix="gpu_check_trl_") as tmp:
        common = dict(
            output_dir=tmp,
            per_device_train_batch_size=run_config.batch_size,
            per_device_eval_batch_size=run_config.effective_eval_batch_size,
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            learning_rate=run_config.lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=0.0,
            max_length=None,
            seed=run_config.random_seed,
            use_cpu=not cuda,
            bf16=True,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_dropout=True,
            dataloader_num_workers=0,
            gradient_checkpointing=False,
        )
        if run_config.objective == "ex_rm":
            model = load_model(
                run_config.model, AutoModelForSequenceClassification, tokenizer, dtype=torch.float32, num_labels=1
            )
            trainer = RewardTrainer(
                model=model,
                args=RewardConfig(**common),
                train_dataset=train,
                eval_dataset={"test": test},
                processing_class=tokenizer,
            )
        else:
            model = load_model(run_config.model, AutoModelForCausalLM, tokenizer, dtype=torch.float32)
            trainer = DPOTrainer(
                model=model,
                args=DPOConfig(**common, beta=run_config.kl_coeff, loss_type=["sigmoid"]),
                train_dataset=train,
                eval_dataset={"test": test},
                processing_class=tokenizer,
            )

        def score() -> float:
            with trainer.autocast_smart_context_manager():
                return trl_accuracy(
                    trainer, run_config.objective, trainer.eval_dataset["test"], run_config.effective_eval_batch_size
                )

        train_s, eval_s, accuracy, counts = train_then_score(trainer, score)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None  # on a CPU: set by child_main
    return {
        "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3),
        "train_tokens": counts["real"],
        "peak_mem_mb": round(peak, 1) if peak is not None else None,
        "eval_pairs": len(test),
        "accuracy": accuracy,
    }


def vm_hwm_mb() -> float | None:
    """This process's peak RSS from /proc (Linux keeps ru_maxrss's high-water mark across fork and
    exec, so a child of a large parent would report the parent's)."""
    try:
        line = next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


# --- report --------------------------------------------------------------------------------------


def throughput_table(work: Work, trl: dict[str, Any] | None, cuda: bool) -> tuple[str, list[dict[str, Any]]]:
    """Per objective (its bf16 run), then the TRL comparison's fresh-process contenders."""
    memory = "peak CUDA MB" if cuda else "peak RSS MB"
    rows = []
    for objective in OBJECTIVES:
        run = work.runs.get(f"{objective}_bf16")
        if run is not None and run.ok:
            rows.append({"contender": f"rm_exps {objective}", **figures(run)})
    for objective in ("ex_rm", "im_rm"):
        run = work.runs.get(f"{objective}_zero3")
        if run is not None and run.ok:
            rows.append({"contender": f"rm_exps {objective}, ZeRO-3 (lr {ZERO3_LR:g})", **figures(run)})
    for name, result in (trl or {}).items():
        rows.append({"contender": f"{name} (fresh process)", **result})
    head = ("contender", "train s", "train tok/s", memory, "eval s", "eval pairs/s")
    note = (
        ""
        if cuda
        else (
            "\n(on a CPU the in-process runs' peak RSS is the running maximum of this process; "
            "fresh processes show their own)"
        )
    )
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = (
            r["contender"],
            _fmt(r.get("train_s")),
            _fmt(r.get("train_tokens_per_s")),
            _fmt(r.get("peak_mem_mb")),
            _fmt(r.get("eval_s")),
            _fmt(r.get("eval_pairs_per_s")),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + note, rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def default_json_path() -> str:
    out = os.environ.get("OUT")
    return str(Path(out) / "gpu_check.json") if out else "gpu_check.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json", default=None, help="results file (default: $OUT/gpu_check.json, else ./gpu_check.json)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="seconds after which no new check starts (the rest are reported as skipped); default 480",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (with --tiny: the CI smoke test)")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model shape and 2 steps instead of SmolLM2-135M's shape"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 8; tiny: 2)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated (default: all)")
    parser.add_argument("--skip", default="", help=f"comma-separated checks not to run: {', '.join(OPTIONAL_CHECKS)}")
    parser.add_argument(
        "--work-dir",
        help="keep the model, data, plans, run folders and logs here (default: a temp folder, removed at the end)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = [o for o in args.objectives if o not in OBJECTIVES] + [s for s in args.skip if s not in OPTIONAL_CHECKS]
    if unknown:
        parser.error(f"unknown objective or check: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    json_path = Path(args.json or default_json_path())
    suite = Suite(args.budget_s)
    settings = settings_for(args)
    report: dict[str, Any] = {
        "command": [sys.executable, *sys.argv],
        "settings": vars(settings)
        | {
            "num_train": settings.num_train,
            "budget_s": args.budget_s,
            "objectives": args.objectives,
            "skip": sorted(args.skip),
        },
    }
    work_root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return run_checks(args, suite, settings, work_root, report)
    finally:
        report.update(
            checks=[vars(c) for c in suite.checks],
            passed=suite.passed,
            wall_s=round(suite.elapsed(), 1),
            skipped=[c.name for c in suite.checks if c.status == "SKIP"],
        )
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str))
        print(f"\nwrote {json_path}")
        if not args.work_dir:
            shutil.rmtree(work_root, ignore_errors=True)


def run_checks(
    args: argparse.Namespace, suite: Suite, settings: Settings, work_root: Path, report: dict[str, Any]
) -> int:
    if not suite.run("packages", check_packages).status == "PASS":
        return finish(suite)
    sys.path.insert(0, str(REPO))
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not initialized" for every fresh score head
    hf_logging.disable_progress_bar()
    report["device"] = device_info()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(NO_GPU_MESSAGE, flush=True)
        suite.record(Check("device", "FAIL", NO_GPU_MESSAGE))
        return finish(suite)
    suite.record(Check("device", "PASS", report["device"].get("gpu", "CPU (--allow-cpu)")))

    work = Work(work_root, settings)
    if suite.run("model", lambda: check_model(work)).status != "PASS":
        return finish(suite)
    initial = load_weights(work.model)

    for objective in args.objectives:
        suite.run(f"train/{objective}", lambda o=objective: check_train(work, o, initial))
    for objective in (o for o in SHARE_PROMPT_OBJECTIVES if o in args.objectives):
        if "share_prompt" in args.skip:
            suite.skip(f"share_prompt/{objective}", "--skip share_prompt")
        else:
            suite.run(f"share_prompt/{objective}", lambda o=objective: check_share_prompt(work, o))
    if "zero3" in args.skip:
        suite.skip("zero3", "--skip zero3")
    else:
        suite.run("zero3", lambda: check_zero3(work, initial, suite.remaining() + 30))
    trl_results = None
    if "trl" in args.skip:
        suite.skip("trl", "--skip trl")
    else:
        trl = suite.run("trl", lambda: check_trl(work, suite.remaining))
        trl_results = trl.details.get("results")
    table, rows = throughput_table(work, trl_results, cuda)
    report["table"] = rows
    print(f"\n{table}")
    return finish(suite)


def finish(suite: Suite) -> int:
    print("\nsummary:")
    for c in suite.checks:
        print(f"  {c.status:4} {c.name}: {c.reason}")
    verdict = "PASS" if suite.passed else "FAIL"
    print(
        f"{verdict}: {sum(c.status == 'PASS' for c in suite.checks)} passed, "
        f"{sum(c.status == 'FAIL' for c in suite.checks)} failed, "
        f"{sum(c.status == 'SKIP' for c in suite.checks)} skipped "
        f"in {suite.elapsed():.0f} s",
        flush=True,
    )
    return 0 if suite.passed else 1


if __name__ == "__main__":
    sys.exit(main())
