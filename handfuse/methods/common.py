"""What every fusion method shares: its options, the joint loss, frozen normalisation, evaluation.

The methods reach the models only through the interfaces of
:mod:`handfuse.models.interfaces` (a pose estimator, an action recogniser), so every
method runs with every registered pair (``tests/test_generality.py``).

A fusion method is an ``nn.Module`` whose forward takes a batch of whole
sequences, ``depth`` (B, T, 1, S, S), ``centre`` (B, T, 3) mm (the crop centres)
and ``mask`` (B, T) (True on valid frames, a prefix of each row), and returns at
least

* ``joints_mm`` (B, T, 21, 3): the pose of every frame in mm (zero on padding);
* ``logits`` (B, 45): the sequence's action scores (raw logits, or log-probabilities
  for the ensemble; either way ``softmax`` gives the predicted distribution);
* ``step_logits`` (B, T, 45) and ``attention`` (B, T) or None, from the HAR.

The joint loss (the original's: 0.002 NLL + 0.998 pose MSE) is
``w_nll * CE(logits, label) + w_pose * MSE(joints)``, the MSE over valid frames of
the joints in the crop's normalised units (mm minus the crop centre, over the
cube's half-size: the units the HPE was pre-trained in).

``freeze_norm`` (the original's fine-tuning, on by default) keeps every batch norm
on its pre-trained running statistics and every dropout off while training: the
affine parameters still learn.  A frame's pose then does not depend on which other
frames share its batch, which is what lets :mod:`feedback` batch the frames that
are fed ``w_eq`` and run only the others step by step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import SequenceDataset, collate_sequences
from ..models.film import CONDITIONED, uniform_action
from ..models.interfaces import PosePrior
from ..errors import check
from ..metrics import accuracy
from .noise import perturb

FEEDS = ("prediction", "w_eq", "mix")  # what a feedback HPE is fed at evaluation (see FusionConfig)
NOISES = ("none", "smooth", "dirichlet", "temperature")
COINS = ("step", "item")


def constant_p_eq(p_eq: float, epoch: int, epochs: int) -> float:
    """The original's coin: ``p_eq`` at every epoch."""
    return p_eq


# p_eq schedules by name: (p_eq, epoch, epochs) -> the probability of feeding w_eq at that epoch
# of fine-tuning.  FusionConfig.p_eq_schedule picks one; docs/extending.md adds another.
P_EQ_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": constant_p_eq,
}


def _is_prob(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0


@dataclass(frozen=True)
class FusionConfig:
    """Options of the fusion methods.  Each method reads the ones that concern it (documented there).

    Shared: the joint loss weights, ``freeze_norm``, ``attention`` (the HAR's temporal attention
    switch) and ``film`` (the conditioned HPE's FiLM placement): these two pick which pre-trained
    models a method starts from."""

    attention: bool = False
    film: str = "both"  # FiLM placement of the conditioned HPE (feedback, ensemble's HPE2): the original's best
    w_nll: float = 0.002  # weight of the action cross-entropy in the joint loss (the original's)
    w_pose: float = 0.998  # weight of the pose MSE (normalised crop units)
    freeze_norm: bool = True  # batch-norm statistics and dropout frozen while fine-tuning (the original)
    # feedback (and the ensemble's second pass): the p_eq coin, training only
    p_eq: float = 0.95  # probability of feeding w_eq instead of the prediction at a step
    p_eq_schedule: str = "constant"  # how p_eq moves over the fine-tuning epochs: a name in P_EQ_SCHEDULES
    coin: str = "step"  # "step": one draw per step for the whole batch (the original); "item": per sequence
    feedback_grad: bool = True  # gradients flow through the fed-back action (the original let them)
    eval_feed: str = "prediction"  # evaluation feeds the prediction, w_eq, or "mix": eval_mix*w_eq + (1-eval_mix)*pred
    eval_mix: float = 0.0  # the weight of w_eq in the deterministic "mix" feed
    film_response: float = 0.0  # diagnostics: a random FiLM response to actions, w_eq unchanged (FiLM.add_random_response)
    # noisy feedback (beyond the original): noise injected into the fed action while training
    noise: str = "none"  # one of NOISES; see handfuse.methods.noise
    noise_level: float = 0.5  # in (0, 1]: how far the noise may move the fed vector
    # ensemble
    eta: float = 0.5  # pose = eta * y'' + (1 - eta) * y'
    zeta: float = 0.5  # action = zeta * log p(z'') + (1 - zeta) * log p(z')
    train_hpe1: bool = False  # the ensemble's unconditioned HPE is fine-tuned too (the original froze it)
    train_hpe2: bool = True  # the ensemble's FiLM-conditioned HPE is fine-tuned
    train_hpe: bool = True  # baseline and feedback: the HPE is fine-tuned
    train_har: bool = True  # the HAR is fine-tuned

    def __post_init__(self):
        for name in ("attention", "freeze_norm", "feedback_grad", "train_hpe1", "train_hpe2", "train_hpe", "train_har"):
            check(isinstance(getattr(self, name), bool), f"fusion.{name}", getattr(self, name), "True or False")
        for name in ("p_eq", "eval_mix", "eta", "zeta"):
            check(_is_prob(getattr(self, name)), f"fusion.{name}", getattr(self, name), "a number in [0, 1]")
        for name in ("w_nll", "w_pose"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, f"fusion.{name}",
                  value, "a weight >= 0")
        check(self.w_nll + self.w_pose > 0, "fusion.w_nll", self.w_nll, "w_nll + w_pose > 0 (nothing to train on)")
        check(self.film in CONDITIONED, "fusion.film", self.film, f"one of {CONDITIONED}")
        check(self.p_eq_schedule in P_EQ_SCHEDULES, "fusion.p_eq_schedule", self.p_eq_schedule,
              f"one of {sorted(P_EQ_SCHEDULES)}")
        check(self.coin in COINS, "fusion.coin", self.coin, f"one of {COINS}")
        check(self.eval_feed in FEEDS, "fusion.eval_feed", self.eval_feed, f"one of {FEEDS}")
        check(self.noise in NOISES, "fusion.noise", self.noise, f"one of {NOISES}")
        check(isinstance(self.film_response, (int, float)) and self.film_response >= 0, "fusion.film_response",
              self.film_response, "a scale >= 0 (0: the pre-trained FiLM as it is)")
        check(isinstance(self.noise_level, (int, float)) and 0.0 < self.noise_level <= 1.0, "fusion.noise_level",
              self.noise_level, "a number in (0, 1]")


def frame_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) long: the row of each valid frame in ``x[mask]`` order, -1 on padding."""
    index = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    index[mask] = torch.arange(int(mask.sum()), device=mask.device)
    return index


def scatter_frames(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, ...) values of the valid frames -> (B, T, ...) zero-padded, out of place (autograd-safe)."""
    index = frame_index(mask).clamp_min(0)  # (B, T)
    out = values[index]  # (B, T, ...)
    keep = mask.reshape(mask.shape + (1,) * (values.dim() - 1))
    return torch.where(keep, out, torch.zeros((), dtype=values.dtype, device=values.device))


def w_eq_mask(mask: torch.Tensor, cfg: FusionConfig, training: bool, first_frame: bool = True,
              p_eq: float | None = None) -> torch.Tensor:
    """(B, T) bool: the frames fed ``w_eq``; frame 0 always with ``first_frame`` (step-by-step
    feedback: nothing has been recognised yet).
    Training draws the p_eq coin (per step for the whole batch, or per item: ``cfg.coin``) from
    torch's global generator, with probability ``p_eq`` (default ``cfg.p_eq``; a method passes its
    scheduled value, :meth:`FusionMethod.p_eq_now`); evaluation never does: every frame with
    ``eval_feed="w_eq"``, none after frame 0 otherwise."""
    B, T = mask.shape
    if training:
        shape = (1, T) if cfg.coin == "step" else (B, T)
        fed = (torch.rand(shape) < (cfg.p_eq if p_eq is None else p_eq)).expand(B, T).to(mask.device)
    else:
        fed = torch.full((B, T), cfg.eval_feed == "w_eq", dtype=torch.bool, device=mask.device)
    if first_frame:
        fed = fed.clone()
        fed[:, 0] = True
    return fed


class FusionMethod(nn.Module):
    """Base of the fusion methods: the shared options, unit conversion, the joint loss and frozen norms.

    A subclass implements ``from_pretrained(models, half_cube_mm, cfg)`` and ``forward(depth, centre,
    mask)`` (the module docstring says what it returns); :func:`handfuse.methods.register_method`
    names it.  Fine-tuning tells it the epoch before every step (:meth:`at_epoch`), so anything that
    changes over training reads it here, as :meth:`p_eq_now` does."""

    def __init__(self, cfg: FusionConfig, half_cube_mm: float):
        super().__init__()
        self.cfg, self.half_cube = cfg, float(half_cube_mm)
        self.epoch, self.epochs = 0, 1

    def at_epoch(self, epoch: int, epochs: int) -> None:
        """Fine-tuning is at ``epoch`` (from 0) of ``epochs``."""
        self.epoch, self.epochs = epoch, epochs

    def p_eq_now(self) -> float:
        """The coin's probability of feeding w_eq at the current epoch: ``cfg.p_eq_schedule`` applied to ``cfg.p_eq``."""
        return P_EQ_SCHEDULES[self.cfg.p_eq_schedule](self.cfg.p_eq, self.epoch, self.epochs)

    def to_mm(self, joints: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Normalised joints (..., 21, 3) around crop centres (..., 3) -> mm."""
        return joints.to(centre.dtype) * self.half_cube + centre[..., None, :]

    def fed_action(self, logits: torch.Tensor) -> torch.Tensor:
        """The action distribution (B, 45) a conditioned HPE is fed, from the HAR's logits (B, 45):
        the prediction (detached unless ``feedback_grad``), with the training ``noise`` while
        training, or mixed with w_eq at evaluation when ``eval_feed="mix"``."""
        p = torch.softmax(logits.float(), dim=-1)
        if not self.cfg.feedback_grad:
            p = p.detach()
        if self.training:
            return perturb(p, self.cfg.noise, self.cfg.noise_level)
        if self.cfg.eval_feed == "mix":
            return self.cfg.eval_mix * uniform_action(len(p), p.device, p.dtype) + (1 - self.cfg.eval_mix) * p
        return p

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        """The joint loss of the module docstring, from ``out`` and a collated batch."""
        mask = batch["mask"]
        pred = (out["joints_mm"][mask] - batch["centre"][mask][:, None]) / self.half_cube  # (N, 21, 3)
        pose = F.mse_loss(pred, batch["joints"][mask].to(pred.dtype))
        nll = F.cross_entropy(out["logits"].float(), batch["label"])
        return self.cfg.w_pose * pose + self.cfg.w_nll * nll

    def train(self, mode: bool = True) -> FusionMethod:
        super().train(mode)
        if mode and self.cfg.freeze_norm:
            for m in self.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                    m.eval()
        return self

    def set_trainable(self, module: nn.Module, trainable: bool) -> None:
        module.requires_grad_(trainable)
        if isinstance(module, PosePrior):  # an estimator with a pose prior (optional)
            module.freeze_pca(True)  # the prior stays fixed, as in pre-training


def conditioned_copy(hpe: nn.Module, cfg: FusionConfig) -> nn.Module:
    """A copy of a FiLM-conditioned HPE, with ``cfg.film_response`` added to every FiLM."""
    from ..models.film import FiLM

    hpe = copy.deepcopy(hpe)
    if cfg.film_response > 0:
        for m in hpe.modules():
            if isinstance(m, FiLM):
                m.add_random_response(cfg.film_response)
    return hpe


def sequence_action(logits: torch.Tensor) -> torch.Tensor:
    """Action distributions (B, 45) from sequence or step logits."""
    return torch.softmax(logits.float(), dim=-1)


def evaluate_sequences(model: nn.Module, data: SequenceDataset, batch_size: int = 16) -> dict:
    """A fusion method on whole sequences, in eval mode under ``torch.inference_mode`` (deterministic).

    Returns ``error_mm`` (mean over valid frames), ``accuracy``, ``loss`` (the joint loss, the
    selection metric of fine-tuning), ``logits`` (n, 45), ``labels`` (n,), ``frame_error_mm``
    (a (T_i,) array per sequence) and ``attention`` (a (T_i,) array per sequence, or None)."""
    device = next(model.parameters()).device
    model.eval()
    sums = {"error": 0.0, "loss": 0.0, "frames": 0}
    logits, labels, frame_errors, attention = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = collate_sequences([data[i] for i in range(start, min(start + batch_size, len(data)))])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = model(batch["depth"], batch["centre"], batch["mask"])
            err = (out["joints_mm"].double() - batch["joints_mm"].double()).norm(dim=-1).mean(-1).cpu().numpy()  # (B, T)
            mask = batch["mask"].cpu().numpy()
            sums["error"] += float(err[mask].sum())
            sums["frames"] += int(mask.sum())
            sums["loss"] += float(model.loss(out, batch)) * len(mask)
            logits.append(out["logits"].float().cpu().numpy())
            labels += batch["label"].tolist()
            for b, n in enumerate(batch["length"].tolist()):
                frame_errors.append(err[b, :n])
                att = out.get("attention")
                attention.append(None if att is None else att[b, :n].float().cpu().numpy())
    logits = np.concatenate(logits)
    return {"error_mm": sums["error"] / sums["frames"], "accuracy": float(accuracy(logits, np.array(labels))),
            "loss": sums["loss"] / len(data), "logits": logits, "labels": np.array(labels),
            "frame_error_mm": frame_errors, "attention": attention}

