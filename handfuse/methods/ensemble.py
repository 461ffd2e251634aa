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
and the optional ``noise``, and, with scheduled sampling (``p_true``), first the true
action with probability ``p_true``; evaluation feeds ``eval_feed`` deterministically,
as feedback does (``"true"``: HPE2 fed the true action, the ensemble's oracle).  Which parts train is configurable: ``train_hpe1`` (the original
froze it; a frozen HPE1 runs without building a graph), ``train_hpe2``,
``train_har``.  ``attention`` switches the HAR's temporal attention (both passes:
the HAR is shared).

Speed: z' is known before pass 2 starts, so both passes are batched over every
frame; the ensemble costs about two baselines, never a step-by-step unroll.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import collate_sequences, pose_features
from ..errors import ConfigError
from ..models.film import CONDITIONED, uniform_action
from ..models.interfaces import ActionRecogniser, PoseEstimator
from ..pool import one_thread
from .common import FusionConfig, FusionMethod, conditioned_copy, scatter_frames, see_labels, true_mask, w_eq_mask


class TwoHPEEnsemble(FusionMethod):
    def __init__(self, hpe1: PoseEstimator, hpe2: PoseEstimator, har: ActionRecogniser, half_cube_mm: float,
                 cfg: FusionConfig = FusionConfig()):
        super().__init__(cfg, half_cube_mm)
        if not hpe2.accepts_action:
            raise ConfigError("hpe.film", "none", f"a FiLM placement for HPE2 (one of {CONDITIONED})")
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
            # an unconditioned HPE ignores action=None
            pose = self.run_hpe(hpe, lambda d, a: hpe(d, a)["joints"], depth[mask], action)
        joints = scatter_frames(self.to_mm(pose, centre[mask]), mask)  # (B, T, 21, 3)
        return joints, self.har(pose_features(joints), mask)

    def _fed_actions(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The actions (N, 45) fed to pass 2's valid frames, from pass 1's sequence logits (B, 45)."""
        B, T = mask.shape
        p = self.fed_action(logits)  # (B, 45)
        per_frame = p[:, None].expand(B, T, p.shape[-1])  # (B, T, 45)
        # the coin (training) or eval_feed="w_eq"; frame 0 is not special here: z' is already known
        fed_true = true_mask(mask, self.cfg, self.training, self.p_true_now())  # (B, T)
        fed_w_eq = w_eq_mask(mask, self.cfg, self.training, first_frame=False, p_eq=self.p_eq_now()) & ~fed_true
        per_frame = torch.where(fed_w_eq[..., None], uniform_action(1, p.device, p.dtype), per_frame)
        if bool(fed_true.any()):
            per_frame = torch.where(fed_true[..., None], self.true_action(p)[:, None], per_frame)
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


# ----------------------------------------------------------------------------- the two passes, re-mixed


def _outputs(model: TwoHPEEnsemble, data, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Both passes of a two-HPE ensemble on ``data`` (a SequenceDataset), evaluated once: the valid
    frames' joints of each pass (N, 21, 3) and the truth, each pass's sequence log-probabilities
    (n, 45), the labels."""
    device = next(model.parameters()).device
    model.eval()
    parts = {k: [] for k in ("j1", "j2", "true", "l1", "l2", "label")}
    with torch.inference_mode(), one_thread(device):
        for start in range(0, len(data), batch_size):
            batch = collate_sequences([data[i] for i in range(start, min(start + batch_size, len(data)))])
            mask = batch["mask"]
            see_labels(model, batch["label"])
            out = model(batch["depth"].to(device), batch["centre"].to(device), mask.to(device))
            for key, p in (("1", out["first"]), ("2", out["second"])):
                parts["j" + key].append(p["joints_mm"][mask.to(device)].double().cpu().numpy())
                parts["l" + key].append(torch.log_softmax(p["logits"].double(), -1).cpu().numpy())
            parts["true"].append(batch["joints_mm"][mask].double().numpy())
            parts["label"].append(batch["label"].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _mixed(o: dict[str, np.ndarray], eta: float, zeta: float) -> dict[str, float]:
    joints = eta * o["j2"] + (1 - eta) * o["j1"]
    logp = zeta * o["l2"] + (1 - zeta) * o["l1"]
    return {"error_mm": float(np.linalg.norm(joints - o["true"], axis=-1).mean()),
            "accuracy": float((logp.argmax(1) == o["label"]).mean())}


def ensemble_passes(model: TwoHPEEnsemble, data) -> dict[str, dict[str, float]]:
    """Error (mm) and accuracy of the first pass, the second pass and the mix at the model's eta, zeta."""
    o = _outputs(model, data)
    return {"first pass": _mixed(o, 0.0, 0.0), "second pass": _mixed(o, 1.0, 1.0),
            "mixed": _mixed(o, model.cfg.eta, model.cfg.zeta)}


def mix_grid(model: TwoHPEEnsemble, data, values: list[float]) -> dict[str, np.ndarray]:
    """Error and accuracy (len(values), len(values)) of the ensemble's output at every eta (rows) and
    zeta (columns) in ``values``.  The passes do not depend on eta and zeta, so they run once."""
    o = _outputs(model, data)
    scores = [[_mixed(o, eta, zeta) for zeta in values] for eta in values]
    return {k: np.array([[s[k] for s in row] for row in scores]) for k in ("error_mm", "accuracy")}
