"""Responses sampled from a frozen policy, cached on disk (the sampling itself: rm_exps.eval.generation).

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rm_exps.eval.generation import Decoding, generate
from rm_exps.outputs import read_json, write_json_atomic

log = logging.getLogger("rm_exps")


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
