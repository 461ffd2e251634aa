"""Method #1, the sequential baseline: HPE on every frame, then HAR on the predicted poses.

As in the 2019 study (and Donahue et al. 2015's general recipe of chaining a
spatial and a temporal model), the two halves are pre-trained apart; chained as
they are this is the *untrained* baseline.  All valid frames of a batch of
sequences go through the HPE in one batch; the predicted joints are put back in
millimetres (crop centre + cube half-size), turned into the HAR's pose features
(differentiably, so the chain can later be fine-tuned end to end) and read by the
HAR.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..datasets import SequenceDataset, collate_sequences, pose_features
from ..metrics import accuracy, mean_joint_error
from ..skeleton import NUM_JOINTS


class SequentialBaseline(nn.Module):
    def __init__(self, hpe: nn.Module, har: nn.Module, half_cube_mm: float):
        super().__init__()
        self.hpe, self.har, self.half_cube = hpe, har, half_cube_mm

    def forward(self, depth: torch.Tensor, centre: torch.Tensor, mask: torch.Tensor) -> dict:
        """``depth`` (B, T, 1, S, S) crops, ``centre`` (B, T, 3) crop centres in mm, ``mask`` (B, T).
        Returns ``joints_mm`` (B, T, 21, 3) (zero on padding) and the HAR's outputs."""
        B, T = mask.shape
        pose = self.hpe(depth[mask])  # all valid frames in one batch: (N, 21, 3) normalised
        joints = depth.new_zeros(B, T, NUM_JOINTS, 3)
        joints[mask] = pose["joints"].to(joints.dtype) * self.half_cube + centre[mask][:, None]
        return {"joints_mm": joints, **self.har(pose_features(joints), mask)}


def evaluate_sequences(model: nn.Module, data: SequenceDataset, batch_size: int = 16) -> dict:
    """Pose error (mm, over valid frames) and action accuracy of a chain on whole sequences,
    under ``torch.inference_mode`` and in eval mode (deterministic)."""
    device = next(model.parameters()).device
    model.eval()
    errors, preds, labels, logits = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = collate_sequences([data[i] for i in range(start, min(start + batch_size, len(data)))])
            mask = batch["mask"].to(device)
            out = model(batch["depth"].to(device), batch["centre"].to(device), mask)
            errors.append(np.asarray(mean_joint_error(out["joints_mm"][mask].cpu(), batch["joints_mm"][batch["mask"]]))
                          * int(batch["mask"].sum()))
            logits += list(out["logits"].float().cpu().numpy())
            preds += out["logits"].argmax(1).cpu().tolist()
            labels += batch["label"].tolist()
    frames = sum(int(data[i]["length"]) for i in range(len(data)))
    return {"error_mm": float(np.sum(errors) / frames), "accuracy": float(accuracy(np.array(preds), np.array(labels))),
            "logits": np.stack(logits)}
