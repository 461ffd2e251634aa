"""Plugging in a fourth fusion method: causal pose smoothing between the HPE and the HAR.

The sequential baseline, with one change: before the HAR reads them, the predicted poses are
smoothed over time by a causal exponential moving average whose per-joint rate is learned in
fine-tuning (it starts at 0: no smoothing, exactly the baseline).  Registered as ``"smoothed"``
from outside the package; ``tests/test_study.py`` runs it through the study API, and
``docs/extending.md`` shows this file.
"""
from __future__ import annotations

import torch
from torch import nn

from handfuse.datasets import pose_features
from handfuse.methods import register_method
from handfuse.methods.baseline import SequentialBaseline
from handfuse.methods.common import scatter_frames
from handfuse.skeleton import NUM_JOINTS


class SmoothedBaseline(SequentialBaseline):
    """The baseline with ``y_t = a * y_{t-1} + (1 - a) * x_t`` per joint, ``a = sigmoid(rate) - 0.5``
    clamped to [0, 0.5) (``rate`` starts at 0: ``a = 0``, the baseline)."""

    def __init__(self, hpe, har, half_cube_mm, cfg):
        super().__init__(hpe, har, half_cube_mm, cfg)
        self.rate = nn.Parameter(torch.zeros(NUM_JOINTS, 1))

    def forward(self, depth, centre, mask):
        pose = self.hpe(depth[mask])["joints"]
        joints = scatter_frames(self.to_mm(pose, centre[mask]), mask)  # (B, T, 21, 3)
        a = (torch.sigmoid(self.rate) - 0.5).clamp_min(0.0).to(joints.dtype)  # (21, 1)
        smoothed, previous = [], joints[:, 0]
        for t in range(joints.shape[1]):
            previous = a * previous + (1 - a) * joints[:, t]
            smoothed.append(previous)
        joints = torch.where(mask[..., None, None], torch.stack(smoothed, 1), 0.0)
        return {"joints_mm": joints, **self.har(pose_features(joints), mask)}


def plug_in() -> None:
    """Register the method by name, with the options the study's tables would run it with."""
    register_method("smoothed", SmoothedBaseline, headline_options={})


if __name__ == "__main__":
    from handfuse.study import Study

    plug_in()
    study = Study("smoke", seeds=1)
    record, = study.run("smoothed")
    print(f"smoothed baseline, smoke preset, {study.source} data: {record.test.gt.error_mm:.2f} mm, "
          f"{100 * record.test.gt.accuracy:.1f} %")
