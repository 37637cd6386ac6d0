"""Pairwise metrics, under the reference's names and definitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_c - r_r)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Share of pairs ranked correctly; a tie counts 1/2."""
    return (r_chosen > r_rejected).float().mean() + 0.5 * (r_chosen == r_rejected).float().mean()


def normalized_abs_margin(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean |r_c - r_r| / (unbiased std of all rewards + 1e-8): the margin in units of reward spread."""
    spread = torch.cat([r_chosen, r_rejected]).std() if r_chosen.numel() > 0 else torch.tensor(0.0)
    return (r_chosen - r_rejected).abs().mean() / (torch.nan_to_num(spread) + 1e-8)


def pairwise_metrics(prefix: str, r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """The evaluation metrics of a reward model on one dataset, e.g. `eval test accuracy`."""
    r_chosen, r_rejected = r_chosen.double(), r_rejected.double()
    return {
        f"{prefix} loss": bradley_terry_loss(r_chosen, r_rejected).item(),
        f"{prefix} accuracy": pairwise_accuracy(r_chosen, r_rejected).item(),
        f"{prefix} normalized abs reward margin": normalized_abs_margin(r_chosen, r_rejected).item(),
        f"{prefix} chosen reward": r_chosen.mean().item(),
        f"{prefix} rejected reward": r_rejected.mean().item(),
    }
