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


def uniform_action(batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_eq: the uniform action distribution [1/45] * 45 for every item, (batch, 45)."""
    return torch.full((batch, NUM_ACTIONS), 1.0 / NUM_ACTIONS, device=device, dtype=dtype)


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

    def extra_repr(self) -> str:
        return f"cond_dim={self.linear.in_features}, channels={self.channels}"
