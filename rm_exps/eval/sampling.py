"""Responses sampled from a policy: batched, seeded, split across processes, cached on disk.

Best-of-N and policy evaluation both need a policy's responses to fixed prompts. Generating them
is the expensive part, so the responses of a frozen policy are written once to
`<data_files_dir>/samples/<key>.json`, the key hashing everything that determines them (the policy
and a fingerprint of its weight files, the prompts, N, the decoding settings, the seed, the
number of processes). A second reward model scored on the same samples reads that file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from rm_exps.eval.ham_cycle import left_padded
from rm_exps.outputs import read_json, write_json_atomic

log = logging.getLogger("rm_exps")


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


def generate(
    lm: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], decoding: Decoding, accelerator: Any
) -> list[list[str]]:
    """decoding.n responses per prompt (new tokens only, special tokens skipped), in prompt order.
    Prompts are split across processes; sampling uses a forked RNG seeded per process."""
    device = next(lm.parameters()).device
    devices = [device] if device.type == "cuda" else []
    indexed = list(enumerate(prompts))
    mine_out: list[tuple[int, list[str]]] = []
    with accelerator.split_between_processes(indexed) as mine, torch.random.fork_rng(devices=devices):
        torch.manual_seed(decoding.seed + accelerator.process_index)
        for start in range(0, len(mine), decoding.batch_size):
            chunk = mine[start : start + decoding.batch_size]
            input_ids, attention_mask = left_padded(
                [chat_prompt_ids(tokenizer, p) for _, p in chunk], tokenizer.pad_token_id
            )
            out = lm.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=decoding.max_new_tokens,
                num_return_sequences=decoding.n,
                pad_token_id=tokenizer.pad_token_id,
                **decoding.generate_kwargs(),
            )
            texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            mine_out += [(i, texts[k * decoding.n : (k + 1) * decoding.n]) for k, (i, _) in enumerate(chunk)]
    gathered = dict(gather_object(mine_out)) if accelerator.num_processes > 1 else dict(mine_out)
    return [gathered[i] for i in range(len(prompts))]


def weights_fingerprint(model: str) -> list[Any]:
    """Names, sizes and modification times of a model folder's files (the name for a hub id or
    built-in), so that a retrained policy in the same folder gets new samples."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        return [model]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.iterdir()) if p.is_file()]


def sample_cache_path(
    cache_dir: str | Path, policy: str, prompts: Sequence[str], decoding: Decoding, num_processes: int
) -> Path:
    key = {
        "policy": policy,
        "weights": weights_fingerprint(policy),
        "prompts": list(prompts),
        "decoding": asdict(decoding),
        "generate": decoding.generate_kwargs(),
        "num_processes": num_processes,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "samples" / f"{digest}.json"


def cached_samples(
    policy: str,
    prompts: Sequence[str],
    decoding: Decoding,
    cache_dir: str | Path,
    accelerator: Any,
    dtype: torch.dtype | None = None,
    model_cache_dir: str | None = None,
) -> list[list[str]]:
    """The policy's responses to `prompts`, read from the cache or generated (and cached)."""
    path = sample_cache_path(cache_dir, policy, prompts, decoding, accelerator.num_processes)
    cached = read_json(path)
    if cached is not None and cached.get("prompts") == list(prompts):
        log.info("reusing %d x %d samples of %s from %s", len(prompts), decoding.n, policy, path)
        return cached["samples"]
    from transformers import AutoModelForCausalLM

    from rm_exps.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(policy, cache_dir=model_cache_dir)
    lm = load_model(policy, AutoModelForCausalLM, tokenizer, dtype=dtype, cache_dir=model_cache_dir)
    lm.to(accelerator.device).eval()
    log.info("sampling %d responses for each of %d prompts from %s", decoding.n, len(prompts), policy)
    with torch.inference_mode():
        samples = generate(lm, tokenizer, prompts, decoding, accelerator)
    if accelerator.is_main_process:
        write_json_atomic(
            path, {"policy": policy, "decoding": asdict(decoding), "prompts": list(prompts), "samples": samples}
        )
    accelerator.wait_for_everyone()
    return samples
