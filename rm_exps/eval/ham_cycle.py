"""Can the trained policy *generate* a Hamiltonian cycle, not only verify one?

For objectives whose model is a language model (im_rm, sft), this evaluator samples responses
from the policy on train and test prompts and checks each against the prompt's graph. A prompt
counts as solved if any of `ham_cycle_gen_num_tries` samples is a valid cycle (pass@k). This is
the paper's evidence (Sec. 3.2) that an IM-RM can verify what its policy cannot generate.

Prompts are split across processes and the per-prompt results gathered, so the accuracy covers
each prompt once whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object

from rm_exps.data.hamiltonian import is_hamiltonian_cycle, parse_graph

log = logging.getLogger("rm_exps")


@contextlib.contextmanager
def unwrapped_for_generation(model: torch.nn.Module, accelerator: Any) -> Iterator[torch.nn.Module]:
    """The bare module for `generate`; under ZeRO-3 its parameters are gathered for the duration."""
    unwrapped = accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield unwrapped
    else:
        yield unwrapped


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so that generation continues every row at the same position."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


# The reference's "pure ancestral sampling": temperature 1, no top-k, no top-p, and no repetition penalty
# (generate would otherwise apply the model's generation_config, e.g. Qwen2.5-Instruct's 1.05).
ANCESTRAL_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}


class HamCycleGenerationEvaluator:
    """`eval {split} ham cycle gen accuracy`: share of prompts for which some sample is a valid cycle."""

    def __init__(
        self,
        tokenizer: Any,
        prompts: dict[str, list[str]],
        policy_of: Any,
        num_tries: int = 1,
        max_new_tokens: int = 300,
        do_sample: bool = True,
        batch_size: int = 8,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.prompts = prompts  # raw prompts (the graph text) per split name
        self.policy_of = policy_of  # unwrapped trainable module -> the causal LM that generates
        self.num_tries = num_tries
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.batch_size = batch_size
        self.seed = seed
        self.calls = 0

    def chat_prompt_ids(self, prompt: str) -> list[int]:
        from rm_exps.eval.sampling import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, prompt)

    def sample(self, lm: torch.nn.Module, prompts: list[str]) -> list[list[str]]:
        """`num_tries` decoded samples per prompt (new tokens only, special tokens skipped)."""
        out: list[list[str]] = []
        device = next(lm.parameters()).device
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            input_ids, attention_mask = left_padded(
                [self.chat_prompt_ids(p) for p in chunk], self.tokenizer.pad_token_id
            )
            sampling = ANCESTRAL_SAMPLING if self.do_sample else {"do_sample": False}
            generated = lm.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=self.max_new_tokens,
                num_return_sequences=self.num_tries,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
            texts = self.tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
            out += [texts[i * self.num_tries : (i + 1) * self.num_tries] for i in range(len(chunk))]
        return out

    @staticmethod
    def solved(prompt: str, samples: list[str]) -> bool:
        num_vertices, edges = parse_graph(prompt)
        return any(is_hamiltonian_cycle(s, num_vertices, edges) for s in samples)

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, accelerator: Any) -> dict[str, float]:
        model.eval()
        metrics = {}
        self.calls += 1
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with unwrapped_for_generation(model, accelerator) as unwrapped, torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + 1000 * self.calls + accelerator.process_index)  # seeded, not the training RNG
            lm = self.policy_of(unwrapped)
            for split, prompts in self.prompts.items():
                indexed = list(enumerate(prompts))
                with accelerator.split_between_processes(indexed) as mine:
                    samples = self.sample(lm, [p for _, p in mine]) if mine else []
                    results = [(i, self.solved(p, s)) for (i, p), s in zip(mine, samples)]
                gathered = dict(gather_object(results))  # one entry per prompt
                metrics[f"eval {split} ham cycle gen accuracy"] = sum(gathered.values()) / max(len(gathered), 1)
                if accelerator.is_main_process and samples:
                    log.info("ham cycle generation (%s): prompt %r -> %r", split, prompts[0][-80:], samples[0][0][:120])
        return metrics
