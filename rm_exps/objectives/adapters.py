"""Memory levers for large models, the same for every objective: gradient checkpointing and LoRA.

Both act on the transformers model inside an objective's module (`module.model`), after the
objective built it (so an IM-RM reference copied in `build_model` stays a full, frozen model).
LoRA goes through peft: the adapted layers are changed in place and `module.model` becomes the
PeftModel, so `save_model` writes the adapter in peft's format (`PeftModel.from_pretrained` loads
it). Heads the objective adds stay fully trainable: those inside the transformers model (EX-RM's
`score`) through peft's `modules_to_save`, which saves them with the adapter; those outside it
(e.g. an ICRM value head on the module itself) are never touched by peft.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def lora_config(config: Any, heads: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha or 2 * config.lora.r,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        modules_to_save=heads or None,
        exclude_modules=heads or None,
    )


def apply_memory_options(module: nn.Module, config: Any) -> nn.Module:
    """Gradient checkpointing and/or LoRA on `module.model`, as the run config asks."""
    hf_model = module.model
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works with LoRA too.
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        hf_model.config.use_cache = False
        if config.gradient_checkpointing_layers is not None:
            keep_checkpointed(hf_model, config.gradient_checkpointing_layers)
    if config.lora.r:
        from peft import get_peft_model

        heads = [module.head_name] if hasattr(module, "head_name") else []
        module.model = get_peft_model(hf_model, lora_config(config, heads))
    return module


def keep_checkpointed(hf_model: nn.Module, num_layers: int) -> None:
    """Selective checkpointing: only the first `num_layers` checkpointed layers (the decoder layers,
    in order) recompute; the rest store their activations as without checkpointing."""
    layers = [m for m in hf_model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers[num_layers:]:
        layer.gradient_checkpointing = False


def trainable_parameter_names(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]
