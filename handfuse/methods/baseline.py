"""Method #1, the sequential baseline: the HPE on every frame, then the HAR on the predicted poses.

As in the 2019 study (and Donahue et al. 2015's general recipe of chaining a
spatial and a temporal model), the two halves are pre-trained apart; chained as
they are this is the *untrained* baseline, and fine-tuned end to end on the joint
loss (:mod:`handfuse.methods.common`) the *trained* one.  All valid frames of a
batch of sequences go through the HPE in one batch; the predicted joints are put
back in millimetres (crop centre + cube half-size), turned into the HAR's pose
features (differentiably) and read by the HAR.

Options read: ``train_hpe``, ``train_har``, ``freeze_norm``, ``activation_checkpoint`` (the
HPE's frames in checkpointed chunks), the loss weights.
"""
from __future__ import annotations

import copy

import torch

from ..datasets import pose_features
from ..models.interfaces import ActionRecogniser, PoseEstimator
from .common import FusionConfig, FusionMethod, scatter_frames


class SequentialBaseline(FusionMethod):
    def __init__(self, hpe: PoseEstimator, har: ActionRecogniser, half_cube_mm: float, cfg: FusionConfig = FusionConfig()):
        super().__init__(cfg, half_cube_mm)
        self.hpe, self.har = hpe, har
        self.set_trainable(self.hpe, cfg.train_hpe)
        self.set_trainable(self.har, cfg.train_har)

    @classmethod
    def from_pretrained(cls, models, half_cube_mm: float, cfg: FusionConfig) -> SequentialBaseline:
        """From :class:`handfuse.finetune.Pretrained` (copies: fine-tuning never touches the originals)."""
        return cls(copy.deepcopy(models.hpe), copy.deepcopy(models.har), half_cube_mm, cfg)

    def forward(self, depth: torch.Tensor, centre: torch.Tensor, mask: torch.Tensor) -> dict:
        """``depth`` (B, T, 1, S, S), ``centre`` (B, T, 3) mm, ``mask`` (B, T) -> ``joints_mm``
        (B, T, 21, 3) (zero on padding) and the HAR's outputs (``logits``, ``step_logits``, ...)."""
        # all valid frames in one batch (or in checkpointed chunks): (N, 21, 3) normalised
        pose = self.run_hpe(self.hpe, lambda d: self.hpe(d)["joints"], depth[mask])
        joints = scatter_frames(self.to_mm(pose, centre[mask]), mask)  # (B, T, 21, 3)
        return {"joints_mm": joints, **self.har(pose_features(joints), mask)}
