"""How a policy generates in rm_exps: chat prompts, left padding, decoding settings, batched sampling.

Shared by every evaluator that samples from a language model (best-of-N and policy evaluation via
`rm_exps.eval.sampling`, the Hamiltonian-cycle generation check), so that they prompt, pad and
decode the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object

from rm_exps.distributed import zero_stage


@dataclass(frozen=True)
class Decoding:
    n: int = 1
    max_new_tokens: int = 128
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"do_sample": False}
        # no top-k and no repetition penalty, whatever the model's generation_config ships (Qwen2.5-Instruct: 1.05)
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": 0,
            "repetition_penalty": 1.0,
        }


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt as a user turn with the generation prompt (the assistant turn starts next)."""
    from rm_exps.batching import render_chat

    text = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)  # pinned date
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so that generation continues every row at the same position."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


@contextlib.contextmanager
def unwrapped_for_generation(model: torch.nn.Module, accelerator: Any) -> Iterator[torch.nn.Module]:
    """The bare module for `generate`; under ZeRO-3 its parameters are gathered for the duration."""
    unwrapped = accelerator.unwrap_model(model)
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield unwrapped
    else:
        yield unwrapped


def sample_responses(
    lm: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], decoding: Decoding
) -> list[list[str]]:
    """decoding.n responses per prompt (new tokens only, special tokens skipped), in prompt order,
    generated on this process in batches of decoding.batch_size from the current RNG state."""
    device = next(lm.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(prompts), decoding.batch_size):
        chunk = prompts[start : start + decoding.batch_size]
        input_ids, attention_mask = left_padded([chat_prompt_ids(tokenizer, p) for p in chunk], tokenizer.pad_token_id)
        generated = lm.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=decoding.max_new_tokens,
            num_return_sequences=decoding.n,
            pad_token_id=tokenizer.pad_token_id,
            **decoding.generate_kwargs(),
        )
        texts = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        out += [texts[k * decoding.n : (k + 1) * decoding.n] for k in range(len(chunk))]
    return out


def generate(
    lm: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], decoding: Decoding, accelerator: Any
) -> list[list[str]]:
    """decoding.n responses per prompt, in prompt order. Prompts are split across processes;
    sampling uses a forked RNG seeded per process."""
    device = next(lm.parameters()).device
    devices = [device] if device.type == "cuda" else []
    indexed = list(enumerate(prompts))
    with accelerator.split_between_processes(indexed) as mine, torch.random.fork_rng(devices=devices):
        torch.manual_seed(decoding.seed + accelerator.process_index)
        responses = sample_responses(lm, tokenizer, [p for _, p in mine], decoding)
        mine_out = [(i, r) for (i, _), r in zip(mine, responses)]
    gathered = dict(gather_object(mine_out)) if accelerator.num_processes > 1 else dict(mine_out)
    return [gathered[i] for i in range(len(prompts))]
