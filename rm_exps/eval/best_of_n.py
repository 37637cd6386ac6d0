"""Best-of-N: the trained reward model picks one of N sampled responses per prompt.

The samples come from `rm_exps.eval.sampling` (a policy's responses, cached on disk, so another
reward model scores the very same samples). At the run's last validation the run's own objective
scores every sample (`Objective.rewards`, so any objective works), and for each N in `bon_n` the
highest-scored of the first N samples is selected (the first on ties). Metrics:

    eval bon best-of-{N} accuracy     exact match of the selection with the gold answer (if the data has `answer`)
    eval bon pass@{N}                 some of the first N samples is correct (the oracle selector)
    eval bon best-of-{N} judge reward mean judge score of the selection (with `judge_model`)
    eval bon best-of-{N} win rate     judge prefers the selection over the reference selection (tie 1/2):
                                      the first sample ('first') or another run's selection at the same N

Everything is written to `best_of_n/{test,train}.jsonl` (responses, scores, selections, judge
scores). With DPO pairs on, the highest- vs lowest-scored sample of each prompt becomes a pair in
`dpo_pairs/` (train: the sampled train prompts; test: the best-of-N test prompts).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader

from rm_exps.batching import EncodedPairs, PairCollator, encode_example
from rm_exps.data.arithmetic import is_correct
from rm_exps.eval.judge import Judge, win_rate

log = logging.getLogger("rm_exps")


@dataclass
class SampleSet:
    """Prompts, their gold answers (or None) and N sampled responses each."""

    prompts: list[str]
    answers: list[str] | None
    samples: list[list[str]]


def select(scores: Sequence[Sequence[float]], n: int) -> list[int]:
    """Index of the highest score among the first n of each row (the first one on ties)."""
    return [max(range(min(n, len(row))), key=lambda k: (row[k], -k)) for row in scores]


def selection_metrics(
    sample_set: SampleSet, scores: Sequence[Sequence[float]], n_values: Sequence[int], prefix: str = "eval bon"
) -> tuple[dict[str, float], dict[int, list[int]]]:
    """Accuracy of the selection and pass@N per N (when answers are known), and the selections."""
    selections = {n: select(scores, n) for n in n_values}
    return accuracy_metrics(sample_set, selections, prefix), selections


def listwise_selections(
    judge: Any, sample_set: SampleSet, n_values: Sequence[int], method: str
) -> dict[int, list[int]]:
    """Per N, the candidate a pairwise judge picks among the first N samples of each prompt, by a
    knockout tournament or a linear scan (`rm_exps.eval.listwise`)."""
    from rm_exps.eval.listwise import knockout, linear_scan

    pick = knockout if method == "knockout" else linear_scan
    return {
        n: [pick(judge, prompt, responses[:n]) for prompt, responses in zip(sample_set.prompts, sample_set.samples)]
        for n in n_values
    }


def accuracy_metrics(
    sample_set: SampleSet, selections: dict[int, list[int]], prefix: str = "eval bon"
) -> dict[str, float]:
    """Exact-match accuracy of each selection and pass@N (when the data has gold answers)."""
    metrics: dict[str, float] = {}
    if sample_set.answers is not None:
        correct = [[is_correct(r, a) for r in rs] for rs, a in zip(sample_set.samples, sample_set.answers)]
        for n, chosen in selections.items():
            metrics[f"{prefix} best-of-{n} accuracy"] = sum(c[k] for c, k in zip(correct, chosen)) / len(correct)
            metrics[f"{prefix} pass@{n}"] = sum(any(c[:n]) for c in correct) / len(correct)
    return metrics


def preference_pairs(sample_set: SampleSet, scores: Sequence[Sequence[float]], min_gap: float) -> list[dict[str, Any]]:
    """Highest- vs lowest-scored response of each prompt, if their scores differ by at least
    min_gap and their texts differ."""
    pairs = []
    for i, (prompt, responses, row) in enumerate(zip(sample_set.prompts, sample_set.samples, scores)):
        hi = max(range(len(row)), key=lambda k: (row[k], -k))
        lo = min(range(len(row)), key=lambda k: (row[k], k))
        gap = row[hi] - row[lo]
        if gap >= min_gap and gap > 0 and responses[hi] != responses[lo]:
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": responses[hi],
                    "rejected": responses[lo],
                    "score_gap": gap,
                    "answer": sample_set.answers[i] if sample_set.answers is not None else "",
                }
            )
    return pairs


def packed_pairs(tokenizer: Any, sample_set: SampleSet, input_format: str) -> EncodedPairs:
    """Samples 2k and 2k+1 of a prompt as the two sides of one pair example (an odd last sample is
    paired with itself), so any objective scores them through its pair interface."""
    examples = []
    for prompt, responses in zip(sample_set.prompts, sample_set.samples):
        for k in range(0, len(responses), 2):
            second = responses[k + 1] if k + 1 < len(responses) else responses[k]
            examples.append(
                encode_example(tokenizer, {"prompt": prompt, "chosen": responses[k], "rejected": second}, input_format)
            )
    return EncodedPairs(examples)


class BestOfNEvaluator:
    final_only = True  # scores the samples once, at the run's last validation

    def __init__(
        self,
        objective: Any,
        tokenizer: Any,
        sets: dict[str, SampleSet],
        n_values: Sequence[int],
        out_dir: Path,
        batch_size: int,
        judge: Judge | None = None,
        reference_dir: Path | None = None,
        pairs_dir: Path | None = None,
        min_gap: float = 0.0,
        selection: str = "scores",
        max_answer_tokens: int = 0,
    ):
        self.objective, self.tokenizer, self.batch_size = objective, tokenizer, batch_size
        self.selection, self.max_answer_tokens = selection, max_answer_tokens
        self.sets = sets
        self.n_values = list(n_values)
        self.out_dir, self.pairs_dir = Path(out_dir), pairs_dir
        self.judge, self.reference_dir, self.min_gap = judge, reference_dir, min_gap
        collate = PairCollator(tokenizer.pad_token_id)
        self.packed = {name: packed_pairs(tokenizer, s, objective.input_format) for name, s in sets.items()}
        self.loaders = {
            name: DataLoader(pairs, batch_size=batch_size, collate_fn=collate) for name, pairs in self.packed.items()
        }
        self.prepared = False

    def scores(self, model: torch.nn.Module, name: str, accelerator: Any) -> list[list[float]]:
        """[prompt][sample] rewards of one sample set under the run's objective."""
        flat: list[float] = []
        for batch in self.loaders[name]:
            r_c, r_r = accelerator.gather_for_metrics(tuple(r.float() for r in self.objective.rewards(model, batch)))
            for a, b in zip(r_c.cpu().tolist(), r_r.cpu().tolist()):
                flat += [a, b]
        out, pos = [], 0
        for responses in self.sets[name].samples:
            width = len(responses) + len(responses) % 2
            out.append(flat[pos : pos + len(responses)])
            pos += width
        return out

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        if not self.prepared:
            self.loaders = {k: accelerator.prepare(loader) for k, loader in self.loaders.items()}
            self.prepared = True
        model.eval()
        test = self.sets["test"]
        if self.selection == "scores":
            scores = {name: self.scores(model, name, accelerator) for name in self.sets}
            metrics, selections = selection_metrics(test, scores["test"], self.n_values)
        else:  # a pairwise judge (e.g. gram_judge): every process runs the same deterministic tournament
            from rm_exps.eval.listwise import ObjectiveJudge, reference_logps_by_row

            # The packed samples went through `precompute`: an IM-RM / DPO judge reuses their reference
            # log-probs (its reference was released after precomputation).
            judge = ObjectiveJudge(
                self.objective,
                accelerator.unwrap_model(model),
                self.tokenizer,
                self.batch_size,
                accelerator.device,
                self.max_answer_tokens,
                ref_logps=reference_logps_by_row(self.packed["test"].examples),
            )
            selections = listwise_selections(judge, test, self.n_values, self.selection)
            metrics = accuracy_metrics(test, selections)
            scores = {name: [[] for _ in s.prompts] for name, s in self.sets.items()}  # no per-sample scores
        judged: dict[tuple[int, int], float] = {}
        if self.judge is not None:
            metrics.update(self._judge_metrics(test, selections, judged, accelerator))
        pairs = self._pairs(scores) if self.pairs_dir is not None else None
        if pairs is not None:
            metrics.update({f"eval bon dpo {split} pairs": float(len(rows)) for split, rows in pairs.items()})
        if accelerator.is_main_process:
            self._write(scores, selections, judged, pairs)
        accelerator.wait_for_everyone()
        return metrics

    def _pairs(self, scores: dict[str, list[list[float]]]) -> dict[str, list[dict[str, Any]]]:
        pairs = {split: preference_pairs(self.sets[split], scores[split], self.min_gap) for split in ("train", "test")}
        for split, rows in pairs.items():
            if not rows:
                raise ValueError(
                    f"no DPO pairs from the {split} prompts: every prompt's scores differ by less "
                    f"than dpo_pairs_min_gap={self.min_gap} (or its samples are identical)"
                )
        log.info(
            "DPO pairs: %d train, %d test (of %d and %d prompts)",
            len(pairs["train"]),
            len(pairs["test"]),
            len(self.sets["train"].prompts),
            len(self.sets["test"].prompts),
        )
        return pairs

    def _judge_metrics(
        self, test: SampleSet, selections: dict[int, list[int]], judged: dict[tuple[int, int], float], accelerator: Any
    ) -> dict[str, float]:
        references = self._reference_texts(test)
        wanted = sorted(
            {(i, k) for chosen in selections.values() for i, k in enumerate(chosen)}
            | {(i, 0) for i in range(len(test.prompts))}
        )
        texts = [(test.prompts[i], test.samples[i][k]) for i, k in wanted]
        extra = sorted(
            {(i, text) for per_n in references.values() for i, text in enumerate(per_n)} if references else []
        )
        values = self.judge.score(
            [p for p, _ in texts] + [test.prompts[i] for i, _ in extra],
            [r for _, r in texts] + [t for _, t in extra],
            accelerator,
        )
        judged.update(zip(wanted, values[: len(wanted)]))
        ref_scores = dict(zip(extra, values[len(wanted) :]))
        metrics = {}
        for n, chosen in selections.items():
            mine = [judged[(i, k)] for i, k in enumerate(chosen)]
            if references:
                theirs = [ref_scores[(i, text)] for i, text in enumerate(references[n])]
            else:
                theirs = [judged[(i, 0)] for i in range(len(chosen))]
            metrics[f"eval bon best-of-{n} judge reward"] = sum(mine) / len(mine)
            metrics[f"eval bon best-of-{n} win rate"] = win_rate(mine, theirs)
        return metrics

    def _reference_texts(self, test: SampleSet) -> dict[int, list[str]] | None:
        """Another run's selected response per test prompt and N (None: the first sample)."""
        if self.reference_dir is None:
            return None
        path = self.reference_dir / "test.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"bon_reference: {path} not found (did that run finish best-of-N?)")
        records = {r["prompt"]: r for r in map(json.loads, path.read_text().splitlines())}
        out = {}
        for n in self.n_values:
            texts = []
            for prompt in test.prompts:
                record = records.get(prompt)
                if record is None or str(n) not in record["selected"]:
                    raise ValueError(
                        f"bon_reference {self.reference_dir} has no selection for N={n} of prompt {prompt[:60]!r}; "
                        "both runs need the same best-of-N prompts and bon_n"
                    )
                texts.append(record["responses"][record["selected"][str(n)]])
            out[n] = texts
        return out

    def _write(
        self,
        scores: dict[str, list[list[float]]],
        selections: dict[int, list[int]],
        judged: dict[tuple[int, int], float],
        pairs: dict[str, list[dict[str, Any]]] | None,
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, sample_set in self.sets.items():
            lines = []
            for i, prompt in enumerate(sample_set.prompts):
                record = {
                    "prompt": prompt,
                    "answer": sample_set.answers[i] if sample_set.answers is not None else None,
                    "responses": sample_set.samples[i],
                    "scores": scores[name][i],
                }
                if name == "test":
                    record["selected"] = {str(n): chosen[i] for n, chosen in selections.items()}
                    record["judge"] = {str(k): v for (j, k), v in judged.items() if j == i}
                lines.append(json.dumps(record))
            (self.out_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        if pairs is not None:
            from rm_exps.data.local import save_atomically

            shutil.rmtree(self.pairs_dir, ignore_errors=True)  # a rerun replaces them
            save_atomically(
                datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in pairs.items()}),
                self.pairs_dir,
                {"min_gap": self.min_gap, "num_prompts": {k: len(self.sets[k].prompts) for k in ("train", "test")}},
            )
