"""Counting a model's forward FLOPs, one way for every model (a multiply-add counts 2)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, *inputs: torch.Tensor) -> FlopCounterMode:
    """The counter after one forward of ``model(*inputs)`` in eval mode without gradients (the
    model's mode restored after); ``counter.get_total_flops()`` counts convolutions and matrix
    products, ``counter.get_flop_counts()`` splits them per module."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return counter
