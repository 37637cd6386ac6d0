"""The process group of a launch, and DeepSpeed ZeRO helpers for frozen models (the IM-RM / DPO
reference, the ICRM generator).

Under ZeRO-3 with `zero3_init_flag`, `from_pretrained` creates partitioned parameters: each rank
holds a shard, so a model cannot be deep-copied, and a frozen model that the training engine does
not own needs an engine of its own to run forward. As in TRL's `prepare_deepspeed`, the frozen model
gets a ZeRO-3 inference engine built from a *copy* of the accelerator's DeepSpeed config (no
optimizer, no scheduler), so the training engine's config is never touched.

DeepSpeed's CPU accelerator runs all of this on CPU processes (gloo), which is how the test suite
exercises it (tests/test_deepspeed.py).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only where a run needs it (plan validation does not)
    from torch import nn


def process_state() -> Any:
    """accelerate's PartialState of this process, started as the launch needs: ACCELERATE_USE_CPU is
    honoured (PartialState alone ignores it), and a DeepSpeed launch on CPU processes gets the gloo
    backend (accelerate picks a backend only for accelerators, and without one it would run every
    rank as a single process while DeepSpeed's CPU accelerator sees the whole world)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    kwargs = {}
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and "LOCAL_RANK" in os.environ and not torch.cuda.is_available():
        kwargs["backend"] = "gloo"
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **kwargs)


def agreed(value: Any) -> Any:
    """The main process's `value` on every rank (one process: `value`): what the main process decided
    from the file system (skip a run, resume from a checkpoint, a lock it holds) holds on every rank."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    if state.num_processes == 1:
        return value
    return broadcast_object_list([value if state.is_main_process else None])[0]


def shutdown() -> None:
    """Leave the process group before the interpreter exits (torch asks for it; a group left to
    interpreter teardown can abort with its communication threads still running)."""
    if "torch" not in sys.modules:  # nothing was started (validation, --dry-run, --status)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def uses_deepspeed(accelerate_config: str | None) -> bool:
    """True if an accelerate config file launches DeepSpeed (`distributed_type: DEEPSPEED`)."""
    if not accelerate_config:
        return False
    import yaml

    with open(accelerate_config) as f:
        return str((yaml.safe_load(f) or {}).get("distributed_type", "")).upper() == "DEEPSPEED"


def zero_stage(accelerator: Any) -> int | None:
    """The ZeRO stage of the accelerator's DeepSpeed launch, or None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else int(plugin.zero_stage)


def zero3_enabled() -> bool:
    """True inside an accelerate launch whose DeepSpeed config is ZeRO stage 3."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def copy_parameters_gathered(dst: nn.Module, src: nn.Module) -> None:
    """dst <- src, parameter by parameter. Under ZeRO-3 each pair is gathered from its shards in
    turn (one full parameter in memory at a time) and rank 0's copy is scattered back; without
    ZeRO-3 it is a plain copy."""
    import torch

    gathered = _gathered if zero3_enabled() else (lambda params: contextlib.nullcontext())
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters(), strict=True):
            with gathered([d, s]):
                d.data.copy_(s.data)


def _gathered(params: list[nn.Parameter]) -> Any:
    """Full parameters inside the block; only partitioned ones are gathered (a plain tensor has no ds_id)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters([p for p in params if hasattr(p, "ds_id")], modifier_rank=0)


def frozen_zero3_engine(model: nn.Module, micro_batch_size: int) -> nn.Module:
    """A ZeRO-3 inference engine for a frozen model, from a copy of the accelerator's DeepSpeed config."""
    import deepspeed
    from accelerate.state import AcceleratorState

    plugin = AcceleratorState().deepspeed_plugin
    config: dict[str, Any] = copy.deepcopy(plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config.pop("train_batch_size", None)
    config["gradient_accumulation_steps"] = 1
    if config.get("zero_optimization", {}).get("stage") != 3:
        config["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=model.eval().requires_grad_(False), config=config)
    engine.eval()
    return engine
