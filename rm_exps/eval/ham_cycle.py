"""Can the trained policy *generate* a Hamiltonian cycle, not only verify one?

For objectives whose model is a language model (im_rm, sft), this evaluator samples responses
from the policy on train and test prompts and checks each against the prompt's graph. A prompt
counts as solved if any of `ham_cycle_gen_num_tries` samples is a valid cycle (pass@k). This is
the paper's evidence (Sec. 3.2) that an IM-RM can verify what its policy cannot generate.

Prompts are split across processes and the per-prompt results gathered, so the accuracy covers
each prompt once whatever the number of processes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate.utils import gather_object

from rm_exps.data.hamiltonian import is_hamiltonian_cycle, parse_graph
from rm_exps.eval.generation import Decoding, sample_responses, unwrapped_for_generation

log = logging.getLogger("rm_exps")


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
        # the reference's "pure ancestral sampling": temperature 1, no top-k, no top-p, no repetition penalty
        self.decoding = Decoding(n=num_tries, max_new_tokens=max_new_tokens, do_sample=do_sample, batch_size=batch_size)
        self.seed = seed
        self.calls = 0

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
                    samples = sample_responses(lm, self.tokenizer, [p for _, p in mine], self.decoding)
                    results = [(i, self.solved(p, s)) for (i, p), s in zip(mine, samples)]
                gathered = dict(gather_object(results))  # one entry per prompt
                metrics[f"eval {split} ham cycle gen accuracy"] = sum(gathered.values()) / max(len(gathered), 1)
                if accelerator.is_main_process and samples:
                    log.info("ham cycle generation (%s): prompt %r -> %r", split, prompts[0][-80:], samples[0][0][:120])
        return metrics
