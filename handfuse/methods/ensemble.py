"""Method #3, "boosting-based implicit data augmentation": a two-HPE ensemble with one shared HAR.

The 2019 study's third and best method.  Two passes over the whole sequence:

1. HPE1 (unconditioned) gives poses y' on every frame; the HAR reads them and
   gives the sequence action z'.
2. z' is fed back once, at the end of the sequence, to HPE2 only (FiLM-conditioned,
   pre-trained on ``w_eq``), on every frame: poses y''.  The same HAR gives z''.

Outputs: pose ``eta * y'' + (1 - eta) * y'`` and action ``zeta * log p(z'') +
(1 - zeta) * log p(z')`` (log-probabilities; a softmax of that is the normalised
geometric mixture).  The HAR sees two versions of every sequence for one label:
the implicit data augmentation of the name.  With ``eta = zeta = 0`` the outputs
are exactly the first pass (the untrained baseline before fine-tuning).

Fine-tuned end to end on the joint loss of the combined outputs.  While training,
each frame of pass 2 is fed ``w_eq`` with probability ``p_eq`` (the original: 0.95)
and the optional ``noise``; evaluation feeds ``eval_feed`` deterministically, as
feedback does.  Which parts train is configurable: ``train_hpe1`` (the original
froze it; a frozen HPE1 runs without building a graph), ``train_hpe2``,
``train_har``.  ``attention`` switches the HAR's temporal attention (both passes:
the HAR is shared).

Speed: z' is known before pass 2 starts, so both passes are batched over every
frame; the ensemble costs about two baselines, never a step-by-step unroll.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..datasets import pose_features
from ..errors import ConfigError
from ..models.film import uniform_action
from ..models.interfaces import ActionRecogniser, PoseEstimator
from .common import FusionConfig, FusionMethod, conditioned_copy, scatter_frames, w_eq_mask


class TwoHPEEnsemble(FusionMethod):
    def __init__(self, hpe1: PoseEstimator, hpe2: PoseEstimator, har: ActionRecogniser, half_cube_mm: float,
                 cfg: FusionConfig = FusionConfig()):
        super().__init__(cfg, half_cube_mm)
        if not hpe2.accepts_action:
            raise ConfigError("hpe.film", "none", "a FiLM placement for HPE2 ('blocks', 'fc' or 'both')")
        self.hpe1, self.hpe2, self.har = hpe1, hpe2, har
        self.set_trainable(self.hpe1, cfg.train_hpe1)
        self.set_trainable(self.hpe2, cfg.train_hpe2)
        self.set_trainable(self.har, cfg.train_har)

    @classmethod
    def from_pretrained(cls, models, half_cube_mm: float, cfg: FusionConfig) -> TwoHPEEnsemble:
        return cls(copy.deepcopy(models.hpe), conditioned_copy(models.hpe_film, cfg), copy.deepcopy(models.har),
                   half_cube_mm, cfg)

    def _pass(self, hpe: PoseEstimator, depth, centre, mask, action=None) -> tuple[torch.Tensor, dict]:
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in hpe.parameters())
        with torch.set_grad_enabled(needs_grad):
            pose = hpe(depth[mask], action)["joints"]  # an unconditioned HPE ignores action=None
        joints = scatter_frames(self.to_mm(pose, centre[mask]), mask)  # (B, T, 21, 3)
        return joints, self.har(pose_features(joints), mask)

    def _fed_actions(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The actions (N, 45) fed to pass 2's valid frames, from pass 1's sequence logits (B, 45)."""
        B, T = mask.shape
        p = self.fed_action(logits)  # (B, 45)
        per_frame = p[:, None].expand(B, T, p.shape[-1])  # (B, T, 45)
        # the coin (training) or eval_feed="w_eq"; frame 0 is not special here: z' is already known
        fed_w_eq = w_eq_mask(mask, self.cfg, self.training, first_frame=False)  # (B, T)
        per_frame = torch.where(fed_w_eq[..., None], uniform_action(1, p.device, p.dtype), per_frame)
        return per_frame[mask]

    def forward(self, depth: torch.Tensor, centre: torch.Tensor, mask: torch.Tensor) -> dict:
        """``depth`` (B, T, 1, S, S), ``centre`` (B, T, 3) mm, ``mask`` (B, T) -> the combined
        ``joints_mm`` (B, T, 21, 3) and ``logits`` (B, 45) (log-probabilities), pass 1's ``attention``
        and ``step_logits``, and each pass's outputs under ``first`` and ``second``."""
        joints1, out1 = self._pass(self.hpe1, depth, centre, mask)
        joints2, out2 = self._pass(self.hpe2, depth, centre, mask, self._fed_actions(out1["logits"], mask))
        eta, zeta = self.cfg.eta, self.cfg.zeta
        logits = zeta * F.log_softmax(out2["logits"].float(), -1) + (1 - zeta) * F.log_softmax(out1["logits"].float(), -1)
        return {"joints_mm": eta * joints2 + (1 - eta) * joints1, "logits": logits,
                "step_logits": out1["step_logits"], "attention": out1["attention"],
                "first": {"joints_mm": joints1, **out1}, "second": {"joints_mm": joints2, **out2}}
