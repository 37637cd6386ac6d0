"""A judge reward model: a sequence-classification RM (value at the last token) that scores
(prompt, response) texts in its own chat format, e.g. a saved ex_rm/icrm run or a hub RM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from rm_exps.batching import chat_prompt_and_response, pad_rows
from rm_exps.objectives.modules import ValueHeadReward

NOT_A_JUDGE = (
    "judge_model {name!r} has no trained 'score' head; a judge must be a sequence-classification "
    "reward model, e.g. a saved ex_rm or icrm run"
)


def has_score_head(folder: str | Path) -> bool | None:
    """Whether a local checkpoint stores `score.weight` (read from the safetensors headers, no
    weights loaded); None when it cannot be told (a hub id, another format)."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    return any(key.split(".")[-2:] == ["score", "weight"] for f in files for key in safe_open(str(f), "pt").keys())


class Judge:
    def __init__(self, name: str, batch_size: int = 16, dtype: torch.dtype | None = None, cache_dir: str | None = None):
        if has_score_head(name) is False:  # checked before training, not after
            raise ValueError(NOT_A_JUDGE.format(name=name))
        self.name = name
        self.batch_size = batch_size
        self.dtype = dtype
        self.cache_dir = cache_dir

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], responses: Sequence[str], accelerator: Any) -> list[float]:
        """One reward per (prompt, response); items split across processes, gathered in order.
        Identical items are scored once, so they get the very same value and tie in `win_rate`
        (scored in different batches, padding would make them differ in the last bits). The judge is
        loaded for the call and released after it."""
        from transformers import AutoModelForSequenceClassification

        from rm_exps.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(self.name, cache_dir=self.cache_dir)
        seq_cls = load_model(
            self.name,
            AutoModelForSequenceClassification,
            tokenizer,
            num_labels=1,
            dtype=self.dtype,
            cache_dir=self.cache_dir,
            require_trained=("score",),
        )
        model = ValueHeadReward(seq_cls).to(accelerator.device).eval()
        items = list(zip(prompts, responses))
        indexed = list(enumerate(dict.fromkeys(items)))  # distinct items, first-seen order
        scored: list[tuple[int, float]] = []
        with accelerator.split_between_processes(indexed) as mine:
            for start in range(0, len(mine), self.batch_size):
                chunk = mine[start : start + self.batch_size]
                rows = []
                for _, (prompt, response) in chunk:
                    prompt_text, response_text = chat_prompt_and_response(tokenizer, prompt, response)
                    rows.append(tokenizer(prompt_text + response_text, add_special_tokens=False)["input_ids"])
                input_ids = pad_rows(rows, tokenizer.pad_token_id).to(accelerator.device)
                attention_mask = pad_rows([[1] * len(r) for r in rows], 0).to(accelerator.device)
                seq_end = (
                    torch.arange(len(rows), device=accelerator.device) * input_ids.shape[1] + attention_mask.sum(1) - 1
                )
                values = model(input_ids=input_ids, attention_mask=attention_mask, seq_end=seq_end)
                scored += [(i, float(v)) for (i, _), v in zip(chunk, values.float().cpu().tolist())]
        gathered = dict(gather_object(scored)) if accelerator.num_processes > 1 else dict(scored)
        value_of = {item: gathered[i] for i, item in indexed}
        return [value_of[item] for item in items]


def judge_from_config(config: Any) -> Judge | None:
    """The run's `judge_model` as a Judge in the run's frozen precision; None when the run has none."""
    if config.best_of_n.judge_model is None:
        return None
    return Judge(
        config.best_of_n.judge_model,
        config.effective_eval_batch_size,
        config.resolved_precision.frozen_dtype,
        config.model_cache_dir,
    )


def win_rate(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Share of items where the score beats the reference's; a tie counts 1/2."""
    if not scores:
        return float("nan")
    return sum(1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(scores, reference)) / len(scores)
