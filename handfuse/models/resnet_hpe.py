"""A ResNet-18-style direct pose regressor on a depth crop, optionally FiLM-conditioned on an action.

The second pose estimator, architecturally unlike DeepPrior++ (:mod:`handfuse.models.hpe`):
post-activation *basic* residual blocks (He et al. 2016, "Deep Residual Learning for
Image Recognition", CVPR; ResNet-18 has 2 blocks in each of 4 groups), global
average pooling, and a small FC head that regresses the 63 coordinates directly,
without a pose prior (as the direct regressors of the HANDS 2017 challenge,
Yuan et al. 2018, "Depth-Based 3D Hand Pose Estimation: From Current Achievements
to Future Goals", CVPR).  Sized for CPU by :class:`ResNetHPEConfig`.

    depth (B, 1, S, S) in [-1, 1]
      -> stem: conv k x k stride 2 (stem_channels), BN, ReLU, max-pool 2          (S/4)
      -> groups of basic blocks: conv3x3-BN-ReLU-conv3x3-BN, plus the input (or a
         strided 1x1 conv + BN of it), then ReLU; widths and strides per group
      -> adaptive average pool to pool x pool (1: global, ResNet's), flatten   = trunk, (B, F)
      -> FC fc, ReLU, dropout, FC 63 -> joints (B, 21, 3), normalised           = head

Loss: MSE of the joints (there are no coefficients).

FiLM (the same :class:`handfuse.models.film.FiLM` as DeepPrior++'s, placements
analogous), ``cfg.film``: ``"blocks"`` modulates the input of every residual
block, ``"fc"`` the hidden FC layer's output (before its ReLU), ``"both"`` both.
An absent action is w_eq.  The FiLM layers start at zero, so a conditioned
estimator is exactly the plain one with the same weights, whatever the action
(a plain state_dict loads with ``strict=False``, only ``film`` keys missing).

Speed path, as DeepPrior++'s: ``before_action`` is everything up to the hidden
FC layer when no FiLM sits in the blocks (the action is read only by the head),
else the crops themselves; ``after_action`` finishes the forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check, is_int
from ..skeleton import NUM_ACTIONS, NUM_JOINTS
from .film import FiLM, action_or_w_eq
from .fold import conv_bn, run_stem
from .hpe import FILM_PLACEMENTS, FiLMPlaced, SplitAtAction, channels_last_safe

POSE_DIM = NUM_JOINTS * 3  # 63


@dataclass(frozen=True)
class ResNetHPEConfig(FiLMPlaced):
    """The ResNet regressor.  Defaults: ResNet-18's layout (2 basic blocks in each of 4 groups) at
    a quarter of its widths, on the cpu preset's 64-pixel crop."""

    crop: int = 64  # S, input is (B, 1, S, S)
    stem_channels: int = 16
    stem_kernel: int = 5  # the stem conv's kernel (stride 2); ResNet-18's 7 is made for 224-pixel images
    widths: tuple[int, ...] = (16, 32, 64, 128)  # output channels of each group (ResNet-18: 64..512)
    strides: tuple[int, ...] = (1, 2, 2, 2)  # stride of each group's first block
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per group
    pool: int = 1  # the last map is average-pooled to pool x pool (1: global, ResNet's)
    fc: int = 256  # width of the hidden FC layer
    dropout: float = 0.0
    film: str = "none"  # where an action vector modulates the network: one of FILM_PLACEMENTS

    def __post_init__(self):
        for name in ("widths", "strides", "blocks"):  # lists (from JSON) become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(is_int(self.crop) and self.crop >= 16, "resnet_hpe.crop", self.crop, "an integer >= 16 (pixels)")
        check(is_int(self.stem_channels) and self.stem_channels >= 1, "resnet_hpe.stem_channels",
              self.stem_channels, "an integer >= 1")
        check(self.stem_kernel in (3, 5, 7), "resnet_hpe.stem_kernel", self.stem_kernel, "3, 5 or 7")
        check(len(self.widths) >= 1 and all(is_int(w) and w >= 1 for w in self.widths), "resnet_hpe.widths",
              self.widths, "one or more integers >= 1 (channels per group)")
        check(len(self.strides) == len(self.widths) and all(s in (1, 2) for s in self.strides),
              "resnet_hpe.strides", self.strides, f"{len(self.widths)} strides (one per group), each 1 or 2")
        check(len(self.blocks) == len(self.widths) and all(is_int(b) and b >= 1 for b in self.blocks),
              "resnet_hpe.blocks", self.blocks, f"{len(self.widths)} integers >= 1 (blocks per group)")
        check(is_int(self.pool) and self.pool >= 1, "resnet_hpe.pool", self.pool, "an integer >= 1 (grid side)")
        check(is_int(self.fc) and self.fc >= 1, "resnet_hpe.fc", self.fc, "an integer >= 1")
        check(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0, "resnet_hpe.dropout",
              self.dropout, "a probability in [0, 1)")
        check(self.film in FILM_PLACEMENTS, "resnet_hpe.film", self.film, f"one of {FILM_PLACEMENTS}")


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3 (stride)-BN-ReLU-conv3x3-BN, plus the input or a strided
    1x1 conv + BN of it, then ReLU.  An optional FiLM modulates the input (both paths see it)."""

    def __init__(self, c_in: int, c_out: int, stride: int, cond_dim: int = 0):
        super().__init__()
        self.film = FiLM(cond_dim, c_in) if cond_dim else None
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        if self.film is not None:
            x = self.film(x, action)  # (B, C_in, H, W)
        # every BN follows a convolution: folded into it while frozen (handfuse.models.fold)
        skip = x if self.project is None else conv_bn(*self.project, x)  # (B, C_out, H/s, W/s)
        h = F.relu(conv_bn(self.conv1, self.bn1, x), inplace=True)  # (B, C_out, H/s, W/s)
        return F.relu(conv_bn(self.conv2, self.bn2, h) + skip, inplace=True)


class ResNetHPE(SplitAtAction, nn.Module):
    """ResNet-style direct pose regressor; see the module docstring."""

    def __init__(self, cfg: ResNetHPEConfig = ResNetHPEConfig()):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.stem_channels, cfg.stem_kernel, 2, cfg.stem_kernel // 2, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        cond = NUM_ACTIONS if cfg.film_blocks else 0
        blocks, c_in = [], cfg.stem_channels
        for width, stride, n in zip(cfg.widths, cfg.strides, cfg.blocks):
            for i in range(n):
                blocks.append(BasicBlock(c_in, width, stride if i == 0 else 1, cond))
                c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool)
        self.fc1 = nn.Linear(c_in * cfg.pool**2, cfg.fc)
        self.film_fc = FiLM(NUM_ACTIONS, cfg.fc) if cfg.film_fc else None
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.fc, POSE_DIM)

    @property
    def accepts_action(self) -> bool:
        return self.cfg.film != "none"

    @property
    def channels_last_safe(self) -> bool:
        return channels_last_safe(self)

    def to_channels_last(self) -> ResNetHPE:
        return self.to(memory_format=torch.channels_last)

    def trunk(self, depth: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """Depth crops (B, 1, S, S) -> pooled features (B, F); ``action`` (B, 45) is read with block FiLM."""
        if depth.dim() != 4 or depth.shape[1:] != (1, self.cfg.crop, self.cfg.crop):
            raise ValueError(f"depth must be (B, 1, {self.cfg.crop}, {self.cfg.crop}), got {tuple(depth.shape)}")
        if self.stem[0].weight.is_contiguous(memory_format=torch.channels_last):
            depth = depth.contiguous(memory_format=torch.channels_last)
        if self.cfg.film_blocks:
            action = action_or_w_eq(action, len(depth), depth)
        x = run_stem(self.stem, depth)  # (B, stem, S/4, S/4)
        for block in self.blocks:
            x = block(x, action)  # (B, C_g, ., .)
        return self.pool(x).flatten(1)  # (B, F)

    def _head_from_fc1(self, h: torch.Tensor, action: torch.Tensor | None, target: torch.Tensor | None) -> dict:
        # h: (B, fc), the hidden FC layer's output before its FiLM and ReLU
        if self.film_fc is not None:
            h = self.film_fc(h, action_or_w_eq(action, len(h), h))
        joints = self.out(self.drop(F.relu(h))).view(len(h), NUM_JOINTS, 3)  # (B, 21, 3)
        out = {"joints": joints}
        if target is not None:
            out["loss"] = self.loss(out, target)
        return out

    def forward(self, depth: torch.Tensor, action: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Depth crops (B, 1, S, S), optional action (B, 45) (None: w_eq) and target joints (B, 21, 3)
        -> ``joints`` (B, 21, 3) and, given a target, ``loss``."""
        return self._head_from_fc1(self.fc1(self.trunk(depth, action)), action, target)

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """MSE of the joints against (B, 21, 3) normalised targets."""
        return F.mse_loss(out["joints"], target.to(out["joints"].dtype))
