"""The Persona token-level shift: rewards of responses with unseen prefixes and tokens.

Training pairs say "yes"/"no" with one set of prefixes and tokens; this evaluator keeps each
example's prompt and meaning but swaps in unseen ones (e.g. "My response would be certainly" vs
"I lean toward nope"). A reward model that learned the meaning ranks them like the training pairs;
one that latched onto the training tokens does not. Metrics (reference names, §5.3):

    eval {split} {token} reward                   mean reward of the responses ending in `token`
    eval {split} paraphrased responses accuracy   mean over (yes-token, no-token) combinations of
                                                  the share of examples whose yes response wins
                                                  (a tie counts 1/2)

The unseen prefix of each example is drawn once, from a generator seeded with `seed` (the
reference used the unseeded global RNG). With no unseen prefixes, the last word of the training
response is replaced by the token instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from rm_exps.batching import PairCollator, encode_pairs
from rm_exps.eval.metrics import pairwise_accuracy


def shifted_response(original: str, prefix: str | None, token: str) -> str:
    if prefix is None:  # no unseen prefixes: keep the training prefix, swap the final word
        return original.rsplit(" ", 1)[0] + " " + token if " " in original else token
    return prefix + token


class PersonaShiftEvaluator:
    def __init__(
        self,
        objective: Any,
        tokenizer: Any,
        splits: dict[str, Any],
        yes_tokens: Sequence[str],
        no_tokens: Sequence[str],
        yes_prefixes: Sequence[str],
        no_prefixes: Sequence[str],
        seed: int,
        batch_size: int,
    ):
        self.objective = objective
        self.yes_tokens, self.no_tokens = list(yes_tokens), list(no_tokens)
        overlap = set(self.yes_tokens) & set(self.no_tokens)
        if overlap:
            raise ValueError(
                f"eval tokens {sorted(overlap)} are on both the yes and the no side; their metric names would collide"
            )
        generator = torch.Generator().manual_seed(seed)
        collate = PairCollator(tokenizer.pad_token_id)
        # One loader per (split, k): chosen = yes response with yes token k, rejected = no response
        # with no token k (lists cycled), so every response set is scored exactly once.
        self.loaders: dict[tuple[str, int], DataLoader] = {}
        for split, ds in splits.items():
            n = len(ds)
            yes_pick = _draw(yes_prefixes, n, generator)
            no_pick = _draw(no_prefixes, n, generator)
            for k in range(max(len(self.yes_tokens), len(self.no_tokens))):
                t_yes, t_no = self.yes_tokens[k % len(self.yes_tokens)], self.no_tokens[k % len(self.no_tokens)]
                pairs = [
                    {
                        "prompt": ex["prompt"],
                        "chosen": shifted_response(ex["chosen"], yes_pick[i], t_yes),
                        "rejected": shifted_response(ex["rejected"], no_pick[i], t_no),
                    }
                    for i, ex in enumerate(ds)
                ]
                self.loaders[(split, k)] = DataLoader(
                    encode_pairs(pairs, tokenizer, objective.input_format), batch_size=batch_size, collate_fn=collate
                )
        self.splits = list(splits)
        self.prepared = False

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        if not self.prepared:
            self.loaders = {key: accelerator.prepare(loader) for key, loader in self.loaders.items()}
            self.prepared = True
        model.eval()
        metrics: dict[str, float] = {}
        for split in self.splits:
            yes: dict[str, torch.Tensor] = {}
            no: dict[str, torch.Tensor] = {}
            for (s, k), loader in self.loaders.items():
                if s != split:
                    continue
                r_yes, r_no = self._rewards(model, loader, accelerator)
                yes.setdefault(self.yes_tokens[k % len(self.yes_tokens)], r_yes)
                no.setdefault(self.no_tokens[k % len(self.no_tokens)], r_no)
            for token, rewards in {**yes, **no}.items():
                metrics[f"eval {split} {token} reward"] = rewards.double().mean().item()
            accuracies = [
                pairwise_accuracy(r_y.double(), r_n.double()).item() for r_y in yes.values() for r_n in no.values()
            ]
            metrics[f"eval {split} paraphrased responses accuracy"] = sum(accuracies) / len(accuracies)
        return metrics

    def _rewards(self, model: torch.nn.Module, loader: Any, accelerator: Any) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = [], []
        for batch in loader:
            r_c, r_r = accelerator.gather_for_metrics(tuple(r.float() for r in self.objective.rewards(model, batch)))
            chosen.append(r_c.cpu())
            rejected.append(r_r.cpu())
        return torch.cat(chosen), torch.cat(rejected)


def _draw(options: Sequence[str], n: int, generator: torch.Generator) -> list[str | None]:
    if not options:
        return [None] * n
    return [options[i] for i in torch.randint(0, len(options), (n,), generator=generator).tolist()]
