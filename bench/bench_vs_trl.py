"""rm_exps against TRL on identical reward-model training work, with ratios.

Why: the project claims to train and evaluate EX-RM and IM-RM faster and in less memory than
TRL (RewardTrainer; DPOTrainer, sigmoid loss, beta = kl_coeff) and than the reference harness.
This script measures that claim on one fixed piece of work: the built-in SmolLM2-135M-Instruct,
64 UltraFeedback train pairs (the rows rm_exps' own subsampling picks, seed 517), global batch
4 x 2, one epoch, lr 1e-6, seed 42, fp32, no truncation; then accuracy on 32 pairs each of test,
paraphrase and translate_french (ties count 1/2).

    python bench/bench_vs_trl.py                                  # 1 round, all contenders
    python bench/bench_vs_trl.py --rounds 2 --json bench.json
    python bench/bench_vs_trl.py --contenders rm_exps_im_rm,trl_dpo --rm-exps-set group_by_length=true
    python bench/bench_vs_trl.py --num-train 4 --num-eval 4 --max-wait-idle 0   # smoke test
    python bench/bench_vs_trl.py --report bench.json more_rounds.json          # the table of saved runs

Every contender runs in its own fresh process (`--child NAME`, one `BENCH_RESULT {json}` line on stdout), so peak
RSS is per contender. A round runs every contender once in the given order (A B A B ... across
rounds, so machine drift hits all alike); before each child the parent waits for the 1-minute
load average to fall below --idle-load. rm_exps children go through `run_plan.main` with a
one-run plan; TRL children (TRL is imported only there: bench/requirements.txt) build the same
rows in TRL's conversational format.

Timings: `train` is the training loop, `eval` the accuracy pass over the 3 sets, `precompute`
the frozen-reference log-probs computed before training (rm_exps IM-RM: train and eval rows;
TRL with precompute_ref_log_probs: the same, inside DPOTrainer's constructor); `work` = train +
eval + precompute, the part both harnesses do; `process` = the child's whole wall time (imports,
model load and tokenization included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "  # marks the child's JSON line (the trainers print dicts on stdout too)
MODEL = "smollm2-135m-instruct"
DATA_ROOT = "../shared/data/exrm_imrm"  # relative to the repository root
EVAL_SETS = ("paraphrase", "translate_french")  # plus the UltraFeedback test split
ACCURACY_KEYS = ("test", "paraphrase_test", "translate_french_test")

CONTENDERS = {  # name -> (harness, objective, precompute_ref_log_probs)
    "rm_exps_ex_rm": ("rm_exps", "ex_rm", None),
    "trl_reward": ("trl", "ex_rm", None),
    "rm_exps_im_rm": ("rm_exps", "im_rm", None),
    "trl_dpo": ("trl", "im_rm", False),
    "trl_dpo_precompute": ("trl", "im_rm", True),
}

# The reference harness (princeton-pli/exrm-vs-imrm) on exactly this work on a 2-core machine:
# /work/shared/research/ref_bench.md §5.5 (clean runs). Its eval also scored a 4th set (32 train
# pairs), so its eval and process times cover 4 sets of 32 pairs, not 3.
REFERENCE = {
    "ex_rm": {"process_s": 480.0, "train_s": 299.0, "eval_s": 174.0, "peak_rss_mb": 19_058.0},
    "im_rm": {"process_s": 979.0, "train_s": 521.0, "eval_s": 450.0, "peak_rss_mb": 23_508.0},
}

# (rm_exps contender, TRL contender, target ratio of work time or None)
WALL_TARGETS = (
    ("rm_exps_ex_rm", "trl_reward", 0.8),
    ("rm_exps_im_rm", "trl_dpo", 0.6),
    ("rm_exps_im_rm", "trl_dpo_precompute", 0.9),
)
RSS_TARGETS = (
    ("rm_exps_ex_rm", "trl_reward", None),
    ("rm_exps_im_rm", "trl_dpo", 0.6),
    ("rm_exps_im_rm", "trl_dpo_precompute", 0.6),
)


# --- the shared work ---------------------------------------------------------------------------


def base_config(args: argparse.Namespace, objective: str) -> dict[str, Any]:
    """The one rm_exps run both harnesses reproduce (TRL children read its rows and settings)."""
    root = REPO / args.data_root
    return {
        "experiment_name": f"bench_{objective}",
        "model": MODEL,
        "objective": objective,
        "dataset_path": str(root / "ultrafeedback"),
        "num_train_samples": args.num_train,
        "num_test_samples": args.num_eval,
        "evaluation_datasets_paths": [str(root / "rewritten" / name) for name in EVAL_SETS],
        "evaluation_datasets_names": list(EVAL_SETS),
        "evaluation_datasets_splits": ["test"] * len(EVAL_SETS),
        "eval_train_subset": False,
        "batch_size": 4,
        "gradient_accumulation_steps": 2,
        "epochs": 1,
        "lr": 1e-6,
        "kl_coeff": 0.01,
        "random_seed": 42,
        "optimizer": "adam",
        "cache_reference_logps": False,  # every child computes its reference log-probs itself
        "gradient_checkpointing": args.gradient_checkpointing == "on",
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- rm_exps child -----------------------------------------------------------------------------


def run_rm_exps(args: argparse.Namespace, objective: str) -> dict[str, Any]:
    import run_plan

    with tempfile.TemporaryDirectory(prefix="bench_rm_exps_") as tmp:
        config = {**base_config(args, objective), "outputs_dir": f"{tmp}/out", "data_files_dir": f"{tmp}/data_files"}
        plan = Path(tmp) / "plan.json"
        plan.write_text(json.dumps({"name": "bench", "configurations": [{"base_config": config}]}))
        overrides = [part for kv in args.rm_exps_set for part in ("--set", kv)]
        if run_plan.main(["--plan", str(plan), *overrides]) != 0:
            raise RuntimeError("the rm_exps run failed (its log is in this child's log above)")
        summary = json.loads((Path(tmp) / "out" / config["experiment_name"] / "summary.json").read_text())
    last = summary["last_tracked_values"]
    return {
        "train_s": summary["train_s"],
        "eval_s": summary["eval_s"],
        "precompute_s": summary["precompute_s"],
        "train_tokens": summary["train_tokens"],
        "padding_fraction": summary["padding_fraction"],
        "accuracy": {key: last[f"eval {key} accuracy"]["value"] for key in ACCURACY_KEYS},
    }


# --- TRL child ---------------------------------------------------------------------------------


def conversational(ds: Any) -> Any:
    """prompt/chosen/rejected strings -> TRL's conversational format (TRL applies the chat template)."""
    import datasets

    return datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": ex["prompt"]}],
                "chosen": [{"role": "assistant", "content": ex["chosen"]}],
                "rejected": [{"role": "assistant", "content": ex["rejected"]}],
            }
            for ex in ds
        ]
    )


def shared_rows(args: argparse.Namespace, objective: str) -> tuple[Any, dict[str, Any]]:
    """The train rows and evaluation sets rm_exps would use, through its own selection code."""
    from rm_exps.config import RunConfig
    from rm_exps.run_data import evaluation_sets, load_train_test

    config = RunConfig(**base_config(args, objective))
    train, test = load_train_test(config)
    return conversational(train), {key: conversational(ds) for key, ds in evaluation_sets(config, train, test).items()}


def trl_arguments(objective: str, precompute: bool | None, output_dir: str, checkpointing: bool) -> Any:
    from trl import DPOConfig, RewardConfig

    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # as rm_exps: no decay, no clipping
        max_length=None,
        seed=42,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_dropout=True,
        dataloader_num_workers=0,
        gradient_checkpointing=checkpointing,
    )  # TRL's default is on
    if objective == "ex_rm":
        return RewardConfig(**common)
    return DPOConfig(**common, beta=0.01, loss_type=["sigmoid"], precompute_ref_log_probs=precompute)


class PrecomputeTimer:
    """Times DPOTrainer._precompute_ref_logps (it runs inside the constructor), per dataset name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def install(self, trainer_cls: Any) -> None:
        original = trainer_cls._precompute_ref_logps

        def timed(trainer: Any, dataset: Any, name: str, batch_size: int) -> Any:
            start = time.perf_counter()
            try:
                return original(trainer, dataset, name, batch_size)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        trainer_cls._precompute_ref_logps = timed


def count_tokens(trainer: Any, counts: dict[str, int]) -> None:
    """Count the real and padded tokens of every training batch TRL feeds the model."""
    original = trainer.training_step

    def step(model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
        mask = inputs["attention_mask"]
        real = int(mask.sum())
        counts["real"] += real
        counts["padded"] += mask.numel() - real
        return original(model, inputs, *rest, **kw)

    trainer.training_step = step


def trl_scores(trainer: Any, objective: str, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(chosen, rejected) rewards of a collated batch: the reward head's score (EX-RM), or
    beta * (log pi - log pi_ref) summed over the completion tokens, as DPOTrainer computes it (IM-RM)."""
    if objective == "ex_rm":
        scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        return scores.chunk(2)
    policy_c, policy_r = trainer.compute_ref_log_probs(trainer.model, batch)
    if "ref_chosen_logps" in batch:
        ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:
        ref_c, ref_r = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    return trainer.beta * (policy_c - ref_c), trainer.beta * (policy_r - ref_r)


def trl_accuracy(trainer: Any, objective: str, dataset: Any, batch_size: int) -> float:
    """A plain inference loop over the tokenized set in its order; ties count 1/2."""
    import torch

    rows = list(dataset)
    chosen, rejected = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            r_c, r_r = trl_scores(trainer, objective, trainer.data_collator(rows[start : start + batch_size]))
            chosen.append(r_c.float())
            rejected.append(r_r.float())
    c, r = torch.cat(chosen), torch.cat(rejected)
    return ((c > r).float().mean() + 0.5 * (c == r).float().mean()).item()


def train_then_score(trainer: Any, score: Callable[[], Any]) -> tuple[float, float, Any, dict[str, int]]:
    """trainer.train(), then score() with the model in eval mode: (train_s, eval_s, the score, the
    real and padded train tokens the trainer's collator saw)."""
    counts = {"real": 0, "padded": 0}
    count_tokens(trainer, counts)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    trainer.model.eval()
    start = time.perf_counter()
    result = score()
    return train_s, time.perf_counter() - start, result, counts


def run_trl(args: argparse.Namespace, objective: str, precompute: bool | None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl import DPOTrainer, RewardTrainer

    from rm_exps.models import load_model, load_tokenizer

    train, eval_sets = shared_rows(args, objective)
    tokenizer = load_tokenizer(MODEL)
    set_seed(42)  # before the model, as rm_exps: the EX-RM score head is initialized from the same seed
    timer = PrecomputeTimer()
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        trl_args = trl_arguments(objective, precompute, tmp, args.gradient_checkpointing == "on")
        if objective == "ex_rm":
            model = load_model(MODEL, AutoModelForSequenceClassification, tokenizer, num_labels=1)
            trainer = RewardTrainer(
                model=model, args=trl_args, train_dataset=train, eval_dataset=eval_sets, processing_class=tokenizer
            )
        else:
            timer.install(DPOTrainer)
            model = load_model(MODEL, AutoModelForCausalLM, tokenizer)
            trainer = DPOTrainer(
                model=model, args=trl_args, train_dataset=train, eval_dataset=eval_sets, processing_class=tokenizer
            )
        train_s, eval_s, accuracy, counts = train_then_score(
            trainer,
            lambda: {
                key: trl_accuracy(trainer, objective, trainer.eval_dataset[key], trl_args.per_device_eval_batch_size)
                for key in ACCURACY_KEYS
            },
        )
    total = counts["real"] + counts["padded"]
    return {
        "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3),
        "precompute_s": round(sum(timer.seconds.values()), 3),
        "precompute_detail_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        "train_tokens": counts["real"],
        "padding_fraction": round(counts["padded"] / total, 4) if total else None,
        "accuracy": accuracy,
    }


def run_child(args: argparse.Namespace) -> None:
    import torch

    harness, objective, precompute = CONTENDERS[args.child]
    result = run_rm_exps(args, objective) if harness == "rm_exps" else run_trl(args, objective, precompute)
    result.update(
        name=args.child,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_s=round(cpu_s(), 1),
        torch_threads=torch.get_num_threads(),
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --- the parent --------------------------------------------------------------------------------


def wait_for_idle(threshold: float, timeout_s: float) -> float:
    """Poll the 1-minute load average until it is below `threshold` or `timeout_s` passes; returns it."""
    deadline = time.monotonic() + timeout_s
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() < deadline:
        time.sleep(min(15.0, max(deadline - time.monotonic(), 0.0)))
        load = os.getloadavg()[0]
    if load >= threshold:
        print(
            f"  warning: 1-min load average {load:.2f} >= {threshold} (machine not idle); starting anyway", flush=True
        )
    return load


def child_command(args: argparse.Namespace, name: str) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--num-train",
        str(args.num_train),
        "--num-eval",
        str(args.num_eval),
        "--data-root",
        args.data_root,
        "--gradient-checkpointing",
        args.gradient_checkpointing,
    ]
    return cmd + [part for kv in args.rm_exps_set for part in ("--rm-exps-set", kv)]


def run_child_process(cmd: list[str], name: str, log_path: Path) -> tuple[dict[str, Any], float]:
    """Run a benchmark child (stderr to `log_path`); its `BENCH_RESULT` JSON and its wall seconds.
    A failed child raises with the tail of its log."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    process_s = time.perf_counter() - start
    lines = [line[len(RESULT_PREFIX) :] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"child {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return json.loads(lines[-1]), process_s


def run_contender(args: argparse.Namespace, name: str, log_path: Path) -> dict[str, Any]:
    load = wait_for_idle(args.idle_load, args.max_wait_idle)
    result, process_s = run_child_process(child_command(args, name), name, log_path)
    result.update(
        process_s=round(process_s, 3),
        load_before=round(load, 2),
        load_after=round(os.getloadavg()[0], 2),
        work_s=round(result["train_s"] + result["eval_s"] + result["precompute_s"], 3),
    )
    result["tokens_per_s"] = round(result["train_tokens"] / result["train_s"], 1) if result["train_s"] else None
    result["cores_used"] = round(result["cpu_s"] / process_s, 2)
    return result


def mean_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field means over the rounds of one contender (accuracies per set)."""
    numeric = (
        "process_s",
        "train_s",
        "eval_s",
        "precompute_s",
        "work_s",
        "tokens_per_s",
        "padding_fraction",
        "peak_rss_mb",
        "cores_used",
        "load_before",
        "train_tokens",
    )
    out: dict[str, Any] = {k: statistics.mean(r[k] for r in results) for k in numeric}
    out["accuracy"] = {k: statistics.mean(r["accuracy"][k] for r in results) for k in ACCURACY_KEYS}
    out["rounds"] = len(results)
    return out


def results_table(means: dict[str, dict[str, Any]]) -> str:
    head = (
        "contender",
        "process s",
        "work s",
        "train s",
        "eval s",
        "precomp s",
        "train tok",
        "tok/s",
        "pad frac",
        "peak RSS MB",
        "cores",
        "load",
        "acc test",
        "acc para",
        "acc fr",
    )
    rows = [head, tuple("---" for _ in head)]
    for name, m in means.items():
        acc = m["accuracy"]
        rows.append(
            (
                name,
                f"{m['process_s']:.1f}",
                f"{m['work_s']:.1f}",
                f"{m['train_s']:.1f}",
                f"{m['eval_s']:.1f}",
                f"{m['precompute_s']:.1f}",
                f"{m['train_tokens']:,.0f}",
                f"{m['tokens_per_s']:.0f}",
                f"{m['padding_fraction']:.3f}",
                f"{m['peak_rss_mb']:,.0f}",
                f"{m['cores_used']:.2f}",
                f"{m['load_before']:.2f}",
                *(f"{acc[k]:.3f}" for k in ACCURACY_KEYS),
            )
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def ratio_line(label: str, value: float, target: float | None) -> str:
    verdict = "" if target is None else (f"  (target <= {target}: {'met' if value <= target else 'MISSED'})")
    return f"  {label}: {value:.2f}{verdict}"


def ratios_text(means: dict[str, dict[str, Any]]) -> str:
    lines = ["rm_exps / TRL (work = train + eval + reference precompute):"]
    for ours, theirs, target in WALL_TARGETS:
        if ours in means and theirs in means:
            a, b = means[ours], means[theirs]
            lines.append(ratio_line(f"{ours} / {theirs} work s", a["work_s"] / b["work_s"], target))
            lines.append(ratio_line(f"{ours} / {theirs} train s", a["train_s"] / b["train_s"], None))
            lines.append(ratio_line(f"{ours} / {theirs} process s", a["process_s"] / b["process_s"], None))
            diffs = ", ".join(f"{k} {a['accuracy'][k] - b['accuracy'][k]:+.3f}" for k in ACCURACY_KEYS)
            lines.append(f"  {ours} - {theirs} accuracy: {diffs}")
    for ours, theirs, target in RSS_TARGETS:
        if ours in means and theirs in means:
            lines.append(
                ratio_line(
                    f"{ours} / {theirs} peak RSS", means[ours]["peak_rss_mb"] / means[theirs]["peak_rss_mb"], target
                )
            )
    lines.append("rm_exps / reference harness (ref_bench.md §5.5; its eval and process times cover 4 sets, ours 3):")
    for name, (harness, objective, _) in CONTENDERS.items():
        if harness == "rm_exps" and name in means:
            ref, m = REFERENCE[objective], means[name]
            parts = ", ".join(
                f"{key} {m[key] / ref[key]:.2f}" for key in ("process_s", "train_s", "eval_s", "peak_rss_mb")
            )
            lines.append(f"  {name}: {parts}")
    return "\n".join(lines)


def run_parent(args: argparse.Namespace) -> None:
    names = contender_names(args)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_vs_trl_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.rounds} round(s) of {', '.join(names)}; {args.num_train} train pairs, "
        f"{args.num_eval} eval pairs per set; "
        f"gradient checkpointing {args.gradient_checkpointing} (both); child logs in {log_dir}"
        + (f"; rm_exps overrides {args.rm_exps_set}" if args.rm_exps_set else ""),
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            print(f"round {r + 1}/{args.rounds}: {name} ...", flush=True)
            result = run_contender(args, name, log_dir / f"r{r + 1}_{name}.log")
            results[name].append(result)
            save_json(args, results)
            print(
                f"  work {result['work_s']:.1f} s (train {result['train_s']:.1f}, eval {result['eval_s']:.1f}, "
                f"precompute {result['precompute_s']:.1f}), process {result['process_s']:.1f} s, "
                f"peak RSS {result['peak_rss_mb']:,.0f} MB, load before {result['load_before']:.2f}",
                flush=True,
            )
    means = {name: mean_results(rs) for name, rs in results.items()}
    print(f"\nmeans over {args.rounds} round(s):\n{results_table(means)}\n\n{ratios_text(means)}")
    if args.json:
        save_json(args, results, means)
        print(f"\nwrote {args.json}")


def report(paths: list[str], contenders: list[str] | None = None) -> None:
    """--report: the table and ratios of saved --json files, their rounds pooled per contender
    (only `contenders` when given, e.g. to leave out rounds of older rm_exps code)."""
    pooled: dict[str, list[dict[str, Any]]] = {}
    overrides: dict[str, list[str]] = {}
    for path in paths:
        saved = json.loads(Path(path).read_text())
        for name, rounds in saved["rounds"].items():
            if contenders and name not in contenders:
                continue
            used = saved["arguments"]["rm_exps_set"] if CONTENDERS[name][0] == "rm_exps" else []
            if overrides.setdefault(name, used) != used:
                sys.exit(
                    f"{name} ran with --rm-exps-set {overrides[name]} in one file and {used} in {path}; "
                    "report them separately"
                )
            pooled.setdefault(name, []).extend(rounds)
    means = {name: mean_results(rs) for name, rs in pooled.items() if rs}
    rounds = ", ".join(f"{name} {len(rs)}" for name, rs in pooled.items())
    print(
        f"rounds: {rounds}; rm_exps overrides: {sorted({kv for v in overrides.values() for kv in v}) or 'none'}\n"
        f"{results_table(means)}\n\n{ratios_text(means)}"
    )


def save_json(args: argparse.Namespace, results: dict[str, list], means: dict | None = None) -> None:
    """--json: every child's figures (rewritten after each child, so a late failure loses nothing), then the means."""
    if args.json:
        Path(args.json).write_text(json.dumps({"arguments": vars(args), "rounds": results, "means": means}, indent=2))


def contender_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in (args.contenders or ",".join(CONTENDERS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        sys.exit(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=64, help="train pairs (default 64)")
    parser.add_argument("--num-eval", type=int, default=32, help="pairs per evaluation set (default 32)")
    parser.add_argument("--rounds", type=int, default=1, help="times every contender runs (alternating)")
    parser.add_argument("--contenders", help=f"comma-separated, run in this order (default: {','.join(CONTENDERS)})")
    parser.add_argument("--json", help="write every round's figures and the means to this file")
    parser.add_argument(
        "--rm-exps-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra rm_exps plan field for the rm_exps contenders (repeatable), e.g. group_by_length=true",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default="on",
        help="activation checkpointing in both harnesses (default on: TRL's default, and what fits long rows in RAM)",
    )
    parser.add_argument(
        "--data-root", default=DATA_ROOT, help="folder with ultrafeedback/ and rewritten/ (relative: to the repo)"
    )
    parser.add_argument("--idle-load", type=float, default=1.5, help="start a child once the 1-min load is below this")
    parser.add_argument(
        "--max-wait-idle", type=float, default=1800, help="seconds to wait for that before starting anyway"
    )
    parser.add_argument("--log-dir", help="where the children's logs go (default: a new temp folder)")
    parser.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="print the table and ratios of saved --json files and exit (with --contenders: only those)",
    )
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        sys.path.insert(0, str(REPO))
        run_child(args)
    elif args.report:
        report(args.report, contender_names(args) if args.contenders else None)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
