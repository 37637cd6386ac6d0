"""The training precision of a run: which dtype the trainable weights are held in, what accelerate
autocasts, and which dtype the frozen helper models (reference, generator, judge, sampler) load in.

Why it is its own decision: an optimizer that steps bf16 weights directly loses every update
smaller than half a bf16 ulp. At lr 1e-5 that is every Adam step of a weight with |w| >~ 0.005
(10 AdamW steps left a 0.02 weight unchanged in 1000 of 1000 entries), so most of a model would
never train. Mixed precision keeps fp32 master weights and optimizer state and runs the forward
in bf16 (accelerate's `mixed_precision`, `torch.autocast`); under DeepSpeed with bf16 the engine
keeps its own fp32 master weights. Pure bf16 weights are an explicit opt-in (`bf16_pure`).

Note: transformers 5 loads a checkpoint in its stored dtype by default (bf16 for most hub
models), so the trainable model is always loaded with an explicit dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16_pure")

# accelerate's `mixed_precision` for each precision, and the dtype the trainable weights are held in.
_ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "bf16_pure": "no"}
_WEIGHTS = {"fp32": "float32", "bf16": "float32", "fp16": "float32", "bf16_pure": "bfloat16"}
# Frozen models never step an optimizer, so bf16 is safe for them and halves their memory; fp16
# weights can overflow in a forward without loss scaling, so fp16 runs keep frozen models in fp32.
_FROZEN = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float32", "bf16_pure": "bfloat16"}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: `fp32`, `bf16` (mixed), `fp16` (mixed, loss-scaled) or `bf16_pure`."""

    name: str

    @property
    def mixed_precision(self) -> str:
        """What the Accelerator autocasts to ('no', 'bf16', 'fp16')."""
        return _ACCELERATE[self.name]

    @property
    def weights_dtype(self) -> Any:
        """The torch dtype the trainable model is loaded and optimized in."""
        import torch  # not at import time: plan validation does not load torch

        return getattr(torch, _WEIGHTS[self.name])

    @property
    def frozen_dtype(self) -> Any:
        """The torch dtype of frozen models loaded on their own (generator, judge, sampling policy)."""
        import torch

        return getattr(torch, _FROZEN[self.name])


def launch_mixed_precision() -> str:
    """The mixed precision an `accelerate launch` (flag or config file) asked for, or 'no'."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def resolve_precision(precision: str, use_bf16: bool) -> Precision:
    """The run's precision. An explicit `precision` wins; `auto` is bf16 mixed with the reference's
    `use_bf16: true`, else the launch's mixed precision (e.g. a DeepSpeed config with bf16), else fp32."""
    if precision != "auto":
        return Precision(precision)
    if use_bf16:
        return Precision("bf16")
    launched = launch_mixed_precision()
    return Precision(launched if launched in ("bf16", "fp16") else "fp32")
