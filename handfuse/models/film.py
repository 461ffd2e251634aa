"""FiLM: feature-wise linear modulation of a network's features by a conditioning vector.

Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer"
(AAAI; arXiv 2017).  A linear layer maps the condition ``w`` (here the 45-d action
vector) to a scale ``gamma`` and a shift ``beta`` per channel, and

    y = (1 + gamma) * x + beta,

broadcast over any trailing dims: (B, C) fully connected features or (B, C, H, W)
conv features (either memory format; the result keeps channels_last).

The linear layer starts at zero, so a fresh FiLM is exactly the identity whatever
``w`` is.  While it is fed one constant ``w`` only (the uniform action ``w_eq``
that pre-training feeds), ``gamma`` and ``beta`` are constants: a fixed per-channel
affine that the surrounding layers could absorb, i.e. the conditioned network is a
plain network there.
"""
from __future__ import annotations

import torch
from torch import nn

from ..skeleton import NUM_ACTIONS

# where a network can be conditioned on an action: nowhere, the conv blocks, the FC layers, or both
FILM_PLACEMENTS = ("none", "blocks", "fc", "both")
CONDITIONED = FILM_PLACEMENTS[1:]  # the placements of a conditioned network (feedback, the ensemble's HPE2)


def uniform_action(batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_eq: the uniform action distribution [1/45] * 45 for every item, (batch, 45)."""
    return torch.full((batch, NUM_ACTIONS), 1.0 / NUM_ACTIONS, device=device, dtype=dtype)


def one_hot_action(labels: torch.Tensor, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The true actions' one-hot vectors (batch, 45) from their labels (batch,): what an oracle feeds."""
    return torch.nn.functional.one_hot(labels.long(), NUM_ACTIONS).to(device=device, dtype=dtype)


def action_or_w_eq(action: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The action (batch, 45) a conditioned network reads: ``action`` checked, or w_eq when None
    (on ``like``'s device and dtype)."""
    if action is None:
        return uniform_action(batch, like.device, like.dtype)
    if action.shape != (batch, NUM_ACTIONS):
        raise ValueError(f"action must be ({batch}, {NUM_ACTIONS}), got {tuple(action.shape)}")
    return action


class FiLM(nn.Module):
    """``y = (1 + gamma(w)) * x + beta(w)`` per channel; ``gamma, beta = Linear(w)``, zero at init."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, C, *spatial), cond: (B, cond_dim)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"FiLM: condition batch {cond.shape[0]} differs from feature batch {x.shape[0]}")
        gamma, beta = self.linear(cond.to(x.dtype)).chunk(2, dim=-1)  # (B, C) each
        shape = (x.shape[0], self.channels) + (1,) * (x.dim() - 2)  # (B, C, 1, ..., 1)
        return x * (1 + gamma.view(shape)) + beta.view(shape)

    @torch.no_grad()
    def add_random_response(self, scale: float = 1.0) -> None:
        """Add a random response to the condition that leaves ``w_eq`` (and any constant input's
        output) unchanged: ``W += scale * (R - R w_eq 1^T)``, R drawn like a fresh Linear's weight
        (torch's global generator).  On the simplex this adds ``scale * R (w - w_eq)``.

        Why: trained on w_eq only, a zero-initialised FiLM keeps identical weight columns, so it
        answers every action distribution exactly as it answers w_eq (the untrained feedback chain
        ignores what it is fed).  A randomly initialised FiLM (as the original's, presumably)
        keeps its random column differences, which this restores for the untrained p_eq sweep."""
        w = self.linear.weight  # (2C, cond)
        bound = 1.0 / w.shape[1] ** 0.5
        r = torch.empty_like(w).uniform_(-bound, bound)
        w += scale * (r - r.mean(1, keepdim=True))

    def extra_repr(self) -> str:
        return f"cond_dim={self.linear.in_features}, channels={self.channels}"
