"""Policy evaluation: greedy responses of the trained policy against those of the policy it started
from, on the same test prompts (the reference's evaluate_policy.py, with the generation prompt).

    eval policy judge reward        mean judge score of the trained policy's responses
    eval policy start judge reward  the same for the starting policy
    eval policy win rate            judge prefers the trained policy's response (tie 1/2)
    eval policy accuracy            exact match with the gold answer (data with `answer`)
    eval policy start accuracy

The starting policy's responses are sampled before training (and cached like best-of-N samples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rm_exps.data.arithmetic import is_correct
from rm_exps.eval.generation import Decoding, generate, unwrapped_for_generation
from rm_exps.eval.judge import Judge, win_rate


class PolicyEvaluator:
    final_only = True

    def __init__(
        self,
        tokenizer: Any,
        prompts: list[str],
        answers: list[str] | None,
        start_responses: list[str],
        policy_of: Callable[[torch.nn.Module], torch.nn.Module],
        decoding: Decoding,
        judge: Judge | None,
    ):
        self.tokenizer = tokenizer
        self.prompts, self.answers, self.start = prompts, answers, start_responses
        self.policy_of = policy_of  # unwrapped trainable module -> the causal LM that generates
        self.decoding = decoding
        self.judge = judge

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        model.eval()
        with unwrapped_for_generation(model, accelerator) as unwrapped:
            responses = [
                r[0]
                for r in generate(self.policy_of(unwrapped), self.tokenizer, self.prompts, self.decoding, accelerator)
            ]
        metrics: dict[str, float] = {}
        if self.answers is not None:
            for key, texts in (("eval policy accuracy", responses), ("eval policy start accuracy", self.start)):
                metrics[key] = sum(is_correct(t, a) for t, a in zip(texts, self.answers)) / len(texts)
        if self.judge is not None:
            values = self.judge.score(self.prompts * 2, responses + self.start, accelerator)
            mine, start = values[: len(responses)], values[len(responses) :]
            metrics["eval policy judge reward"] = sum(mine) / len(mine)
            metrics["eval policy start judge reward"] = sum(start) / len(start)
            metrics["eval policy win rate"] = win_rate(mine, start)
        return metrics
