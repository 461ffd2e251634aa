"""Frozen batch norms folded into the convolution before them: one pass over a feature map, not two.

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` is a
single convolution with the scaled weights ``w * s`` and the bias ``beta - mean * s``
(``s = gamma / sqrt(var + eps)``).  :func:`conv_bn` builds them on the fly from the
live parameters, so the fold is differentiable in ``w``, ``gamma`` and ``beta``:
fine-tuning with frozen statistics (``FusionConfig.freeze_norm``, the original's)
trains the same parameters with the same gradients, and evaluation gives the same
outputs, up to float rounding (``tests/test_fold.py`` checks both against
:func:`plain_batch_norm`).  On CPU the saved pass over each map makes fine-tuning steps
and evaluation faster (paired runs of ``python -m benchmarks.fusion_speed``, its
``fold_gain``; docs/benchmarks.md).  A batch norm in training mode (pre-training) runs
as it is.

:func:`run_stem` runs the conv-BN-ReLU-max-pool stem of both pose estimators (DeepPrior++'s
strided stem has no pool: an identity in its place), with the ReLU after the pool:
``relu(maxpool(x)) == maxpool(relu(x))`` exactly (ReLU is monotone), on a quarter of the
elements.  Where no gradient is needed (evaluation), the 2x2 pool of a channels_last map runs
as :func:`max_pool_2x2`: the same values without torch's kernel's int64 indices, which it
always writes on CPU (faster: docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_enabled = True


@contextlib.contextmanager
def plain_batch_norm():
    """Within this block, :func:`conv_bn` runs the convolution and the batch norm as two modules, and
    :func:`run_stem` pools with torch's kernel (the reference path of the equivalence tests and of the
    benchmark's ``fold_gain``)."""
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
    """A ``Sequential(conv, BN, ReLU, MaxPool2d or Identity)`` stem on ``x``: the BN folded when frozen, the ReLU
    after the pool, and the pool as :func:`max_pool_2x2` where that gives the same values faster."""
    conv, bn, _, pool = layers
    h = conv_bn(conv, bn, x)  # (B, C, H, W)
    return F.relu(max_pool_2x2(h) if _pairs_pool(pool, h) else pool(h), inplace=True)


def _pairs_pool(pool: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``pool(x)`` is a plain 2x2, stride-2 max-pool of an even-sized channels_last map that
    needs no gradient: the case :func:`max_pool_2x2` computes."""
    return (isinstance(pool, nn.MaxPool2d) and _enabled and not (torch.is_grad_enabled() and x.requires_grad)
            and _pair(pool.kernel_size) == (2, 2) and _pair(pool.stride or pool.kernel_size) == (2, 2)
            and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1) and not pool.return_indices
            and x.dim() == 4 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last))


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of a channels_last (B, C, H, W) map with even H and W, without indices:
    in memory (B, H, W, C), horizontal neighbours are adjacent runs of C values, so two elementwise
    maxima (rows, then the two halves of each 2C run) give the pool, NaNs propagating as torch's do.
    For inference only: it is differentiable, but its backward splits ties where torch's picks one."""
    b, c, h, w = x.shape
    pairs = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2 * c)  # a view: (B, H/2, 2, W/2, 2C)
    rows = torch.maximum(pairs[:, :, 0], pairs[:, :, 1])  # (B, H/2, W/2, 2C)
    return torch.maximum(rows[..., :c], rows[..., c:]).permute(0, 3, 1, 2)  # (B, C, H/2, W/2), channels_last
