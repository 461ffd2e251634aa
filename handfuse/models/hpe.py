"""DeepPrior++-style hand pose estimator on a depth crop, optionally FiLM-conditioned on an action.

Oberweger & Lepetit 2017, "DeepPrior++: Improving Fast and Accurate 3D Hand Pose
Estimation" (ICCV Workshops): a residual CNN regresses the coefficients of a
linear pose prior (a PCA of the training poses), which a fixed linear decoder
turns into joints.

    depth (B, 1, S, S) in [-1, 1]
      -> stem: conv 5x5 (stem_channels), BN, ReLU, max-pool 2 (``stem_stride`` 1, the original),
         or conv 5x5 with stride 2, BN, ReLU (``stem_stride`` 2: a quarter of the stem's work)
      -> groups of pre-activation bottleneck blocks (He et al. 2016, "Identity
         Mappings in Deep Residual Networks"), widths 64/128/256/256, strides 2/2/2/1
      -> BN, ReLU, adaptive average pool to pool x pool, flatten      = trunk, (B, F)
      -> FC fc, ReLU, dropout, FC fc, ReLU, dropout, FC pca_dim       = head
      -> PCA decoder pca_dim -> 63 -> joints (B, 21, 3), in the dataset's units
         (centred on the crop centre, divided by the cube's half-size)

Pooling.  DeepPrior++ flattens the last feature map, which ties the first FC to
one crop size.  Here the map is average-pooled to a fixed ``pool x pool`` grid
(default 4) and flattened: any crop works with the same head (crop 64 ends in a
4x4 map, so this *is* DeepPrior++'s flatten there; crop 128 averages 2x2 cells),
and the coarse layout survives, which plain global pooling (``pool=1``) throws away
although where a finger is *is* the answer.

PCA.  :meth:`HPE.init_pca` fits the prior to (N, 21, 3) training poses: the mean
and the top ``pca_dim`` principal directions are kept as buffers (``pca_mean``,
``pca_basis``; they project targets) and copied into ``decoder``, an ordinary
Linear, frozen by default as in pre-training (:meth:`HPE.freeze_pca`).  The
coefficients are not whitened, so a squared error in PCA space is a squared error
in joint space.

Loss (nanoGPT style, as ``PoseLSTM``): ``forward(depth, action, target)`` returns
the outputs and, given target joints, ``loss``; :meth:`HPE.loss` computes it from
the outputs.  ``cfg.loss="pca"`` (DeepPrior++): MSE between the predicted
coefficients and the target's projection ``(target - mean) @ basis.T``.  With an
orthonormal, frozen decoder this is the joint-space MSE up to a constant and a
scale of 63/pca_dim, i.e. the same gradients.  ``"joints"``: MSE of the decoded
joints, the right one once the decoder is unfrozen.  Evaluation reads ``joints``.

FiLM (:mod:`handfuse.models.film`), ``cfg.film``: ``"blocks"`` modulates the input
of every residual block, ``"fc"`` the output of both hidden FC layers (before their
ReLU, as FiLM's own ResBlock does), ``"both"`` both.  An absent action is w_eq =
1/45.  The FiLM layers start at zero, so a conditioned HPE is then *exactly* the
plain HPE with the same weights, whatever the action; and while it is only ever
fed w_eq (pre-training), every FiLM is a constant per-channel affine, so it stays a
plain HPE.  A plain HPE's state_dict loads into a conditioned one with
``strict=False``: only the ``film`` keys are missing.

Speed path.  ``forward = head(trunk(depth, action), action)``.  With film
``"none"`` or ``"fc"`` the trunk (nearly all the FLOPs) ignores the action, so a
whole sequence's frames go through it in one batch and the per-step action
feedback only re-runs the cheap head.  With ``"blocks"`` the trunk needs the
action.  On CPU ``model.to(memory_format=torch.channels_last)`` (or
:meth:`HPE.to_channels_last`) is markedly faster; inputs are converted to match.
A frozen batch norm (eval mode, and fine-tuning with ``freeze_norm``) that follows a
convolution is folded into it (:mod:`handfuse.models.fold`): bn2 and bn3 of every
block and the stem's.

Interfaces: :class:`HPE` is a ``PoseEstimator`` with a ``PosePrior``
(:mod:`handfuse.models.interfaces`), registered as ``"deepprior"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check, is_int
from ..skeleton import NUM_ACTIONS, NUM_JOINTS
from .film import FILM_PLACEMENTS, FiLM, action_or_w_eq
from .flops import forward_flops
from .fold import conv_bn, run_stem

POSE_DIM = NUM_JOINTS * 3  # 63
LOSSES = ("pca", "joints")


class FiLMPlaced:
    """``film_blocks`` / ``film_fc`` of a pose estimator's config, from its ``film`` placement."""

    film: str

    @property
    def film_blocks(self) -> bool:
        return self.film in ("blocks", "both")

    @property
    def film_fc(self) -> bool:
        return self.film in ("fc", "both")


@dataclass(frozen=True)
class HPEConfig(FiLMPlaced):
    """The pose estimator.  Defaults are the original's network on the cpu preset's 64-pixel crop."""

    crop: int = 64  # S, input is (B, 1, S, S); the original used 128
    stem_channels: int = 32
    stem_stride: int = 1  # 1: conv 5x5, then max-pool 2 (the original); 2: a stride-2 conv, no pool (same map size)
    widths: tuple[int, ...] = (64, 128, 256, 256)  # output channels of each residual group
    strides: tuple[int, ...] = (2, 2, 2, 1)  # stride of each group's first block
    blocks: tuple[int, ...] = (5, 5, 5, 5)  # bottleneck blocks per group (the original: 5)
    min_mid: int = 1  # floor of a bottleneck's inner width, width // 4 (16 keeps narrow nets channels_last-safe)
    pool: int = 4  # the last map is average-pooled to pool x pool before the head (1: global)
    fc: int = 1024  # width of the two hidden FC layers
    dropout: float = 0.3
    pca_dim: int = 30  # coefficients of the linear pose prior
    film: str = "none"  # where an action vector modulates the network: one of FILM_PLACEMENTS
    loss: str = "pca"  # "pca": MSE of the coefficients (DeepPrior++); "joints": MSE of the joints

    def __post_init__(self):
        for name in ("widths", "strides", "blocks"):  # lists (from JSON) become tuples: hashable, comparable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(is_int(self.crop) and self.crop >= 16, "hpe.crop", self.crop, "an integer >= 16 (pixels)")
        check(is_int(self.min_mid) and self.min_mid >= 1, "hpe.min_mid", self.min_mid,
              "an integer >= 1 (channels; 1: every bottleneck narrows to width // 4, as the original)")
        check(is_int(self.stem_channels) and self.stem_channels >= 1, "hpe.stem_channels", self.stem_channels,
               "an integer >= 1")
        check(self.stem_stride in (1, 2), "hpe.stem_stride", self.stem_stride,
              "1 (conv, then max-pool 2: the original) or 2 (a stride-2 conv, no pool)")
        check(len(self.widths) >= 1 and all(is_int(w) and w >= 1 for w in self.widths), "hpe.widths",
               self.widths, "one or more integers >= 1 (channels per residual group)")
        check(len(self.strides) == len(self.widths) and all(s in (1, 2) for s in self.strides), "hpe.strides",
               self.strides, f"{len(self.widths)} strides (one per group), each 1 or 2")
        check(len(self.blocks) == len(self.widths) and all(is_int(b) and b >= 1 for b in self.blocks),
               "hpe.blocks", self.blocks, f"{len(self.widths)} integers >= 1 (blocks per group)")
        check(is_int(self.pool) and self.pool >= 1, "hpe.pool", self.pool, "an integer >= 1 (grid side)")
        check(is_int(self.fc) and self.fc >= 1, "hpe.fc", self.fc, "an integer >= 1")
        check(0.0 <= self.dropout < 1.0, "hpe.dropout", self.dropout, "a probability in [0, 1)")
        check(is_int(self.pca_dim) and 1 <= self.pca_dim <= POSE_DIM, "hpe.pca_dim", self.pca_dim,
               f"an integer in 1..{POSE_DIM}")
        check(self.film in FILM_PLACEMENTS, "hpe.film", self.film, f"one of {FILM_PLACEMENTS}")
        check(self.loss in LOSSES, "hpe.loss", self.loss, f"one of {LOSSES}")


def channels_last_safe(model: nn.Module) -> bool:
    """Whether every conv of ``model`` has at least 16 channels.  With fewer (the smoke preset's 2-8),
    torch 2.13's CPU channels_last convolution backward corrupts memory for odd batch sizes ("double
    free or corruption", a segfault), so such tiny models stay in the default format."""
    return all(min(m.in_channels, m.out_channels) >= 16 for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.in_channels > 1)


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1, plus the
    input, or a strided 1x1 projection of the pre-activated input when the shape changes.  An optional
    FiLM modulates the block's input (both paths see the modulated features)."""

    def __init__(self, c_in: int, c_out: int, stride: int, cond_dim: int = 0, min_mid: int = 1):
        super().__init__()
        mid = max(c_out // 4, min_mid)
        self.film = FiLM(cond_dim, c_in) if cond_dim else None
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, c_out, 1, bias=False)
        self.project = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        if self.film is not None:
            x = self.film(x, action)  # (B, C_in, H, W)
        # in-place ReLUs are safe here: BatchNorm's backward needs its input, not its output
        pre = F.relu(self.bn1(x), inplace=True)
        skip = x if self.project is None else self.project(pre)  # (B, C_out, H/s, W/s)
        # bn2 and bn3 follow a convolution: folded into it while frozen (handfuse.models.fold)
        h = F.relu(conv_bn(self.conv1, self.bn2, pre), inplace=True)  # (B, mid, H, W)
        h = F.relu(conv_bn(self.conv2, self.bn3, h), inplace=True)  # (B, mid, H/s, W/s)
        return self.conv3(h) + skip  # (B, C_out, H/s, W/s)


class SplitAtAction:
    """``before_action`` / ``after_action`` (the PoseEstimator interface's speed split) for an
    estimator built as ``trunk(depth, action)`` -> ``fc1`` -> ``_head_from_fc1(h, action, target)``,
    whose FiLM sits in the trunk's blocks (``cfg.film_blocks``) and/or in the FC head."""

    def before_action(self, depth: torch.Tensor) -> torch.Tensor:
        """The part of the forward that ignores the action, per frame (B, ...): the first FC layer's
        output with FiLM in the FC layers (or none), the crops themselves with FiLM in the blocks.
        Action feedback computes it once for every frame and re-runs only :meth:`after_action`."""
        if self.cfg.film_blocks:
            return depth
        return self.fc1(self.trunk(depth))  # (B, fc)

    def after_action(self, x: torch.Tensor, action: torch.Tensor | None = None,
                     target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Finish the forward from :meth:`before_action`'s output: the same outputs as ``forward``."""
        if self.cfg.film_blocks:
            return self(x, action, target)
        return self._head_from_fc1(x, action, target)


class HPE(SplitAtAction, nn.Module):
    """DeepPrior++-style pose estimator; see the module docstring."""

    def __init__(self, cfg: HPEConfig = HPEConfig()):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.stem_channels, 5, stride=cfg.stem_stride, padding=2, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2) if cfg.stem_stride == 1 else nn.Identity(),  # either way (B, stem, S/2, S/2)
        )
        cond = NUM_ACTIONS if cfg.film_blocks else 0
        blocks, c_in = [], cfg.stem_channels
        for width, stride, n in zip(cfg.widths, cfg.strides, cfg.blocks):
            for i in range(n):
                blocks.append(Bottleneck(c_in, width, stride if i == 0 else 1, cond, cfg.min_mid))
                c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.BatchNorm2d(c_in)  # pre-activation nets end with BN-ReLU
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool)
        self.feature_dim = c_in * cfg.pool**2

        self.fc1, self.fc2 = nn.Linear(self.feature_dim, cfg.fc), nn.Linear(cfg.fc, cfg.fc)
        self.film1 = FiLM(NUM_ACTIONS, cfg.fc) if cfg.film_fc else None
        self.film2 = FiLM(NUM_ACTIONS, cfg.fc) if cfg.film_fc else None
        self.drop = nn.Dropout(cfg.dropout)
        self.fc3 = nn.Linear(cfg.fc, cfg.pca_dim)

        self.decoder = nn.Linear(cfg.pca_dim, POSE_DIM)  # coefficients -> 63, set by init_pca
        self.register_buffer("pca_mean", torch.zeros(POSE_DIM))  # (63,)
        self.register_buffer("pca_basis", torch.eye(cfg.pca_dim, POSE_DIM))  # (pca_dim, 63), orthonormal rows
        self.register_buffer("pca_ready", torch.tensor(False))
        self._set_decoder()
        self.freeze_pca(True)

    # ------------------------------------------------------------------ the pose prior

    @torch.no_grad()
    def init_pca(self, poses: torch.Tensor) -> float:
        """Fit the prior to (N, 21, 3) normalised training poses (N >= pca_dim) and load it into the
        decoder.  Returns the fraction of the poses' variance that the kept components explain."""
        x = torch.as_tensor(poses).reshape(len(poses), POSE_DIM).double()  # (N, 63)
        if len(x) < self.cfg.pca_dim:
            raise ValueError(f"init_pca needs at least pca_dim = {self.cfg.pca_dim} poses, got {len(x)}")
        mean = x.mean(0)  # (63,)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh: (min(N, 63), 63)
        self.pca_mean.copy_(mean)
        self.pca_basis.copy_(vh[: self.cfg.pca_dim])
        self.pca_ready.fill_(True)
        self._set_decoder()
        variance = s.square()
        return float(variance[: self.cfg.pca_dim].sum() / variance.sum().clamp_min(1e-30))

    def freeze_pca(self, frozen: bool = True) -> None:
        """Freeze (the default, as DeepPrior++'s pre-training) or unfreeze the decoder."""
        self.decoder.requires_grad_(not frozen)

    @torch.no_grad()
    def _set_decoder(self) -> None:
        self.decoder.weight.copy_(self.pca_basis.T)  # (63, pca_dim)
        self.decoder.bias.copy_(self.pca_mean)

    def project(self, joints: torch.Tensor) -> torch.Tensor:
        """Joints (B, 21, 3) -> their prior coefficients (B, pca_dim) (the fitted PCA, not the decoder)."""
        return (joints.reshape(len(joints), POSE_DIM) - self.pca_mean) @ self.pca_basis.T

    def decode(self, pca: torch.Tensor) -> torch.Tensor:
        """Coefficients (B, pca_dim) -> joints (B, 21, 3) through the decoder."""
        return self.decoder(pca).view(len(pca), NUM_JOINTS, 3)

    # ------------------------------------------------------------------ the network

    def to_channels_last(self) -> HPE:
        """Convert the conv weights to channels_last (faster on CPU); inputs follow automatically."""
        return self.to(memory_format=torch.channels_last)

    @property
    def channels_last_safe(self) -> bool:
        """Whether every conv has at least 16 channels (see :func:`channels_last_safe`)."""
        return channels_last_safe(self)

    @property
    def accepts_action(self) -> bool:
        """Whether an action conditions the output (FiLM somewhere): the pose-estimator interface."""
        return self.cfg.film != "none"

    def _action(self, action: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        return action_or_w_eq(action, batch, like)

    def trunk(self, depth: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """Depth crops (B, 1, S, S) -> features (B, feature_dim).  ``action`` (B, 45) is only read
        with block FiLM (``film`` "blocks" or "both"; None: w_eq)."""
        if depth.dim() != 4 or depth.shape[1:] != (1, self.cfg.crop, self.cfg.crop):
            raise ValueError(f"depth must be (B, 1, {self.cfg.crop}, {self.cfg.crop}), got {tuple(depth.shape)}")
        if self.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last):
            depth = depth.contiguous(memory_format=torch.channels_last)
        if self.cfg.film_blocks:
            action = self._action(action, len(depth), depth)
        x = run_stem(self.stem, depth)  # (B, stem, S/2, S/2)
        for block in self.blocks:
            x = block(x, action)  # (B, C_g, ., .)
        x = F.relu(self.norm(x), inplace=True)  # (B, C, h, w)
        if x.shape[-2:] != (self.cfg.pool, self.cfg.pool):  # crop 64 ends on the grid: pooling would copy it
            x = self.pool(x)  # (B, C, pool, pool)
        return x.flatten(1)  # (B, feature_dim)

    def head(self, features: torch.Tensor, action: torch.Tensor | None = None,
             target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Features (B, feature_dim) -> ``pca`` (B, pca_dim), ``joints`` (B, 21, 3) and, given target
        joints (B, 21, 3), ``loss``.  ``action`` (B, 45) is only read with FC FiLM (None: w_eq)."""
        return self._head_from_fc1(self.fc1(features), action, target)

    def _head_from_fc1(self, h: torch.Tensor, action: torch.Tensor | None, target: torch.Tensor | None) -> dict:
        # h: (B, fc), the first FC layer's output, before its FiLM and ReLU
        if self.cfg.film_fc:
            action = self._action(action, len(h), h)
            h = self.film1(h, action)
        h = self.fc2(self.drop(F.relu(h)))  # (B, fc)
        if self.cfg.film_fc:
            h = self.film2(h, action)
        pca = self.fc3(self.drop(F.relu(h)))  # (B, pca_dim)
        out = {"pca": pca, "joints": self.decode(pca)}
        if target is not None:
            out["loss"] = self.loss(out, target)
        return out

    def forward(self, depth: torch.Tensor, action: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Depth crops (B, 1, S, S), optional action (B, 45) (None: w_eq) and target joints (B, 21, 3)
        -> ``pca`` (B, pca_dim), ``joints`` (B, 21, 3) and, given a target, ``loss``."""
        return self.head(self.trunk(depth, action), action, target)

    def loss(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """MSE in PCA space (``cfg.loss="pca"``) or of the joints (``"joints"``) against (B, 21, 3)."""
        if self.cfg.loss == "joints":
            return F.mse_loss(out["joints"], target.to(out["joints"].dtype))
        # (not read while a CUDA graph is captured: a host read would break the capture; the eager
        # warm-up steps before it have checked it)
        capturing = self.pca_ready.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing and not bool(self.pca_ready):
            raise RuntimeError("the PCA loss needs the prior: call init_pca(training poses) first")
        return F.mse_loss(out["pca"], self.project(target.to(out["pca"].dtype)))


def frozen_for_inference(model: HPE):
    """A compiled copy of ``model``'s forward for inference only: ``torch.compile`` with inductor's
    *freezing*, which treats the weights as constants, folds every batch norm that follows a
    convolution into it and pre-packs the weights for oneDNN.  On our CPUs this is faster than eager
    channels_last inference (``python -m benchmarks.hpe_speed``, docs/benchmarks.md), but compiling
    takes a while for every new input shape, so it pays off only for long inference jobs with a fixed
    batch shape.

    Call it under ``torch.inference_mode()`` (or ``no_grad``) with the model in eval mode, and build
    it again after changing the weights: the folded ones are a snapshot.  It returns the
    joints (B, 21, 3) for depth crops (B, 1, S, S), the same as ``model(depth)["joints"]`` up to
    float rounding (a test checks it)."""
    if model.training:
        raise ValueError("frozen_for_inference needs the model in eval mode (model.eval())")
    return _Frozen(torch.compile(_Joints(model), dynamic=False))


class _Frozen:
    """Calls a compiled module with inductor's freezing switched on, so that every compilation it
    triggers (the first call, and each new input shape) freezes the weights."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, depth: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(depth)


class _Joints(nn.Module):
    """``model(depth)["joints"]``: one tensor out, which compiles with no dict guards."""

    def __init__(self, model: HPE):
        super().__init__()
        self.model = model

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.model(depth)["joints"]


def count_flops(model: nn.Module) -> int:
    """Forward FLOPs per frame of any pose estimator (a multiply-add counts 2; convolutions and matrix
    products only, as ``torch.utils.flop_counter`` counts), measured on one frame in eval mode."""
    p = next(model.parameters())
    x = torch.zeros(1, 1, model.cfg.crop, model.cfg.crop, device=p.device, dtype=p.dtype)
    return int(forward_flops(model, x).get_total_flops())


def hpe_flops(cfg: HPEConfig) -> int:
    """Forward FLOPs per frame of an HPE built from ``cfg`` (see :func:`count_flops`)."""
    return count_flops(HPE(cfg))
