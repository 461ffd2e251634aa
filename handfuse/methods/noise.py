"""Noisy action feedback: perturb the fed-back action distribution while fine-tuning.

The 2019 study's named future work: instead of the p_eq coin (feed the uniform
``w_eq`` or the clean prediction), train the conditioned HPE on *noisy* versions
of the HAR's prediction, so that it learns to take imperfect feedback without
the errors compounding through time.  Three kinds, each a distribution over the
45 actions that stays on the simplex (``level`` in (0, 1] sets its strength):

* ``"smooth"``: label smoothing towards w_eq with a random weight,
  ``(1 - e) * p + e * w_eq``, ``e ~ U(0, level)`` per item;
* ``"dirichlet"``: a Dirichlet draw centred on the prediction,
  ``w ~ Dir(c * p + 1e-3)`` with concentration ``c = 45 / level`` (reparameterised,
  so gradients still flow through ``p``);
* ``"temperature"``: the prediction sharpened or flattened by a random temperature,
  ``softmax(log p / tau)``, ``log tau ~ U(-L, L)`` with ``L = level * ln 10``.

Evaluation never draws noise: it feeds the clean prediction (``FusionConfig.eval_feed``).
"""
from __future__ import annotations

import math

import torch

from ..skeleton import NUM_ACTIONS


def perturb(p: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """A noisy version (B, 45) of action distributions ``p`` (B, 45); ``kind`` "none" returns ``p``.
    Draws from torch's global generator (seeded per epoch by ``handfuse.train.fit``)."""
    if kind == "none":
        return p
    B = len(p)
    if kind == "smooth":
        e = torch.rand(B, 1).to(p) * level  # (B, 1)
        return (1 - e) * p + e / NUM_ACTIONS
    if kind == "dirichlet":
        concentration = p * (NUM_ACTIONS / level) + 1e-3  # (B, 45)
        return torch.distributions.Dirichlet(concentration.float()).rsample().to(p.dtype)
    if kind == "temperature":
        log_tau = (torch.rand(B, 1).to(p) * 2 - 1) * level * math.log(10)  # (B, 1)
        return torch.softmax(torch.log(p.clamp_min(1e-12)) / log_tau.exp(), dim=-1)
    raise ValueError(f"noise kind must be one of 'none', 'smooth', 'dirichlet', 'temperature', got {kind!r}")
