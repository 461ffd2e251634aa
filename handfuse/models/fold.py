"""Frozen batch norms folded into the convolution before them: one pass over a feature map, not two.

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` is a
single convolution with the scaled weights ``w * s`` and the bias ``beta - mean * s``
(``s = gamma / sqrt(var + eps)``).  :func:`conv_bn` builds them on the fly from the
live parameters, so the fold is differentiable in ``w``, ``gamma`` and ``beta``:
fine-tuning with frozen statistics (``FusionConfig.freeze_norm``, the original's)
trains the same parameters with the same gradients, and evaluation gives the same
outputs, up to float rounding (``tests/test_fold.py`` checks both against
:func:`plain_batch_norm`).  On the 2-core CPU the saved pass over each map makes a
fine-tuning step about 1.1-1.25x faster and evaluation about 1.25x (paired runs of
``python -m benchmarks.fusion_speed``, its ``fold_gain``).  A batch norm in training
mode (pre-training) runs as it is.

:func:`run_stem` runs the conv-BN-ReLU-max-pool stem of both pose estimators, with the ReLU
after the pool: ``relu(maxpool(x)) == maxpool(relu(x))`` exactly (ReLU is monotone),
on a quarter of the elements.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_enabled = True


@contextlib.contextmanager
def plain_batch_norm():
    """Within this block, :func:`conv_bn` runs the convolution and the batch norm as two modules
    (the reference path of the equivalence tests and of the benchmark's ``fold_gain``)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``, as one convolution when ``bn`` is frozen (eval mode, running statistics)."""
    if bn.training or bn.running_mean is None or not _enabled:
        return bn(conv(x))
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = bn.weight * scale
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format (channels_last)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def run_stem(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A ``Sequential(conv, BN, ReLU, MaxPool2d)`` stem on ``x``: the BN folded when frozen, the ReLU
    after the pool."""
    conv, bn, _, pool = layers
    return F.relu(pool(conv_bn(conv, bn, x)), inplace=True)
