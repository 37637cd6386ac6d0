"""Attention for the shared-prompt layout (`share_prompt`) without the work its 4-D mask wastes.

A shared row is prompt + chosen + rejected (batching.SharedPromptCollator). Through the 4-D mask,
SDPA scores every (query, key) of the row and then masks most of them: the upper triangle (a
custom mask rules out the kernels' causal block skipping) and the whole chosen x rejected block.
Here a batch is two SDPA calls instead, on the scores the mask allows:
prompt + chosen attends causally to itself (`is_causal`, no mask, upper blocks skipped), and
rejected attends to the prompt and causally to itself (keys gathered per row). Outputs and
gradients equal the masked path's up to float rounding.

It takes over only on the CPU, where it was measured (docs/PERFORMANCE.md: the attention kernel's
time in a SmolLM2-135M forward 725 -> 431 ms on UltraFeedback-sized rows), and only for full-row
passes that carry `segment_lengths`; everything else (other devices, generation with a cache,
one-row-per-sequence batches) runs transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SHARED_PROMPT_SDPA = "rm_exps_shared_prompt_sdpa"


def _at_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states [B, heads, L, D] at per-row sequence positions [B, N] -> [B, heads, N, D]."""
    return states.gather(2, positions[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[3]))


def shared_prompt_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    segment_lengths: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query/key/value [B, heads, L, D] -> ([B, L, heads, D], None).

    `segment_lengths` [B, 3] holds each row's (prompt, chosen, rejected) token counts; positions
    after them are padding, whose outputs are left unspecified (nothing real attends to them)."""
    if segment_lengths is None or query.device.type != "cpu" or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    p, c, r = (segment_lengths[:, i, None].to(query.device) for i in range(3))  # [B, 1] each
    # Prompt + chosen is a prefix of every row: one causal call over the longest such prefix.
    # (Rows with a shorter prefix get garbage at their rejected positions; it is replaced below.)
    prefix = int((p + c).max())
    out = sdpa_attention_forward(
        module, query[:, :, :prefix], key[:, :, :prefix], value[:, :, :prefix], None, is_causal=True, **kwargs
    )[0]  # [B, prefix, heads, D]
    out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, query.shape[2] - prefix))
    # Rejected: its queries against [prompt keys; rejected keys], gathered per row, lower-right causal.
    steps = torch.arange(int(r.max()), device=query.device)[None, :]  # [1, R]
    slots = torch.arange(int((p + r).max()), device=query.device)[None, :]  # [1, P+R]
    query_pos = (p + c + steps).clamp(max=query.shape[2] - 1)  # [B, R]
    key_pos = torch.where(slots < p, slots, slots + c).clamp(max=query.shape[2] - 1)  # [B, P+R]: skip chosen
    allowed = (slots[:, None, :] < p[:, :, None]) | (slots[:, None, :] - p[:, :, None] <= steps[:, :, None])
    allowed &= slots[:, None, :] < (p + r)[:, :, None]
    allowed[:, :, 0] |= steps >= r  # padded query steps: one key, no empty softmax
    rejected = sdpa_attention_forward(
        module,
        _at_positions(query, query_pos),
        _at_positions(key, key_pos),
        _at_positions(value, key_pos),
        allowed[:, None],
        **kwargs,
    )[0]  # [B, R, heads, D]
    positions = torch.arange(query.shape[2], device=query.device)[None, :]
    is_rejected = (positions >= p + c) & (positions < p + c + r)  # [B, L]
    step_of = (positions - p - c).clamp(0, rejected.shape[1] - 1)
    from_rejected = rejected.gather(1, step_of[:, :, None, None].expand(-1, -1, *rejected.shape[2:]))
    return torch.where(is_rejected[:, :, None, None], from_rejected, out), None


AttentionInterface.register(SHARED_PROMPT_SDPA, shared_prompt_sdpa)
AttentionMaskInterface.register(SHARED_PROMPT_SDPA, sdpa_mask)  # the masks SDPA itself would get
