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

``activation_checkpoint`` (on in the ``paper`` preset) trades time for memory: every method
runs its pose estimators through :meth:`FusionMethod.run_hpe`, which then keeps only the
inputs and outputs of each chunk of that many frames and recomputes the chunk's activations in
the backward (``torch.utils.checkpoint``, non-reentrant, RNG state preserved), so that a
fine-tuning step holds the activations of one chunk instead of those of every frame of the
batch, for about one more forward pass of the estimator.  The numbers stay those of the run
without it, to float rounding (``tests/test_checkpointing.py``): a batch norm that reads batch
statistics or a live dropout (``freeze_norm=False``) ties a call's frames together, so such a
call is one chunk, whatever its size, and its recomputation leaves the running statistics alone.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..datasets import SequenceDataset, collate_sequences
from ..models.film import CONDITIONED, one_hot_action, uniform_action
from ..models.interfaces import PosePrior
from ..errors import ConfigError, check, is_int
from ..metrics import accuracy
from .noise import perturb

FEEDS = ("prediction", "w_eq", "mix", "true")  # what a feedback HPE is fed at evaluation (see FusionConfig)
NOISES = ("none", "smooth", "dirichlet", "temperature")
COINS = ("step", "item")


def constant_p_eq(p_eq: float, epoch: int, epochs: int) -> float:
    """The original's coin: ``p_eq`` at every epoch."""
    return p_eq


def linear_decay(p: float, epoch: int, epochs: int) -> float:
    """``p`` at the first epoch, falling linearly to 0 at the last (scheduled sampling's linear decay)."""
    return p * (1.0 - epoch / (epochs - 1)) if epochs > 1 else p


def inverse_sigmoid(p: float, epoch: int, epochs: int) -> float:
    """``p`` times an inverse sigmoid of the training progress, halfway through at half of ``p``
    (scheduled sampling's inverse-sigmoid decay, Bengio et al. 2015, in epochs)."""
    return p / (1.0 + math.exp(10.0 * (epoch / max(1, epochs - 1) - 0.5)))


# Schedules by name: (p, epoch, epochs) -> the probability at that epoch of fine-tuning, for the
# coins of FusionConfig (p_eq through p_eq_schedule, p_true through p_true_schedule).
# docs/extending.md adds another.
P_EQ_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": constant_p_eq,
    "linear_decay": linear_decay,
    "inverse_sigmoid": inverse_sigmoid,
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
    hpe_feed: str = "w_eq"  # the conditioned HPE starts from its pre-training on this feed (handfuse.tasks.PRETRAIN_FEEDS)
    # feedback (and the ensemble's second pass): the p_eq coin, training only
    p_eq: float = 0.95  # probability of feeding w_eq instead of the prediction at a step
    p_eq_schedule: str = "constant"  # how p_eq moves over the fine-tuning epochs: a name in P_EQ_SCHEDULES
    coin: str = "step"  # "step": one draw per step for the whole batch (the original); "item": per sequence
    feedback_grad: bool = True  # gradients flow through the fed-back action (the original let them)
    # scheduled sampling (Bengio et al. 2015): a step after frame 0 is fed the TRUE action with
    # probability p_true (scheduled over the epochs), else the p_eq coin decides; training only
    p_true: float = 0.0
    p_true_schedule: str = "constant"  # a name in P_EQ_SCHEDULES, e.g. "linear_decay": true early, own later
    feed_after: int = 0  # a late action: frames before this one are fed w_eq, in training and evaluation
    # evaluation: the prediction, w_eq, "mix" (eval_mix*w_eq + (1-eval_mix)*pred), or "true": the
    # true action on every frame (the oracle: the best the architecture can do with a perfect HAR)
    eval_feed: str = "prediction"
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
    # memory: frames per chunk whose pose-estimator activations are recomputed in the backward
    # instead of kept (FusionMethod.run_hpe); 0 or None: off, every activation kept
    activation_checkpoint: int = 0

    def __post_init__(self):
        if self.activation_checkpoint is None:  # off, stored as 0: the two spellings compare equal
            object.__setattr__(self, "activation_checkpoint", 0)
        check(is_int(self.activation_checkpoint) and self.activation_checkpoint >= 0, "fusion.activation_checkpoint",
              self.activation_checkpoint, "an integer >= 0 (frames per checkpointed chunk; 0 or None: off)")
        for name in ("attention", "freeze_norm", "feedback_grad", "train_hpe1", "train_hpe2", "train_hpe", "train_har"):
            check(isinstance(getattr(self, name), bool), f"fusion.{name}", getattr(self, name), "True or False")
        for name in ("p_eq", "p_true", "eval_mix", "eta", "zeta"):
            check(_is_prob(getattr(self, name)), f"fusion.{name}", getattr(self, name), "a number in [0, 1]")
        for name in ("w_nll", "w_pose"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, f"fusion.{name}",
                  value, "a weight >= 0")
        check(self.w_nll + self.w_pose > 0, "fusion.w_nll", self.w_nll, "w_nll + w_pose > 0 (nothing to train on)")
        check(self.film in CONDITIONED, "fusion.film", self.film, f"one of {CONDITIONED}")
        from ..tasks import PRETRAIN_FEEDS  # here: the tasks module imports the datasets, as this one does

        check(self.hpe_feed in PRETRAIN_FEEDS, "fusion.hpe_feed", self.hpe_feed, f"one of {PRETRAIN_FEEDS}")
        for name in ("p_eq_schedule", "p_true_schedule"):
            check(getattr(self, name) in P_EQ_SCHEDULES, f"fusion.{name}", getattr(self, name),
                  f"one of {sorted(P_EQ_SCHEDULES)}")
        check(isinstance(self.feed_after, int) and not isinstance(self.feed_after, bool) and self.feed_after >= 0,
              "fusion.feed_after", self.feed_after, "a frame index >= 0 (0: every frame may be fed an action)")
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
    feedback: nothing has been recognised yet), and every frame before ``cfg.feed_after`` (a late action).
    Training draws the p_eq coin (per step for the whole batch, or per item: ``cfg.coin``) from
    torch's global generator, with probability ``p_eq`` (default ``cfg.p_eq``; a method passes its
    scheduled value, :meth:`FusionMethod.p_eq_now`); evaluation never does: every frame with
    ``eval_feed="w_eq"``, none after frame 0 otherwise (``eval_feed="true"``: not frame 0 either)."""
    B, T = mask.shape
    if training:
        fed = _coin(mask, cfg, cfg.p_eq if p_eq is None else p_eq)
    else:
        fed = torch.full((B, T), cfg.eval_feed == "w_eq", dtype=torch.bool, device=mask.device)
    fed = fed.clone()
    if first_frame and (training or cfg.eval_feed != "true"):
        fed[:, 0] = True
    fed[:, :cfg.feed_after] = True
    return fed


def true_mask(mask: torch.Tensor, cfg: FusionConfig, training: bool, p_true: float) -> torch.Tensor:
    """(B, T) bool: the frames fed the true action.  Training: the scheduled-sampling coin with
    probability ``p_true`` (drawn as the p_eq coin is, ``cfg.coin``), never frame 0; evaluation:
    every frame with ``eval_feed="true"``, none otherwise.  Never a frame before ``cfg.feed_after``."""
    B, T = mask.shape
    if training:
        fed = _coin(mask, cfg, p_true) if p_true > 0 else torch.zeros((B, T), dtype=torch.bool, device=mask.device)
        fed = fed.clone()
        fed[:, 0] = False
    else:
        fed = torch.full((B, T), cfg.eval_feed == "true", dtype=torch.bool, device=mask.device)
    fed[:, :cfg.feed_after] = False
    return fed & mask


def _coin(mask: torch.Tensor, cfg: FusionConfig, p: float) -> torch.Tensor:
    """(B, T) bool drawn from torch's global generator with probability ``p``: one draw per step for
    the whole batch (``coin="step"``) or one per item and step (``"item"``)."""
    B, T = mask.shape
    shape = (1, T) if cfg.coin == "step" else (B, T)
    return (torch.rand(shape) < p).expand(B, T).to(mask.device)


def couples_frames(module: nn.Module) -> bool:
    """Whether a frame's output of ``module`` can depend on how a batch is split: a batch norm that
    reads batch statistics (training mode), or a live dropout, whose masks are drawn per call."""
    return any(m.training for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.Dropout) and m.p > 0))


@contextmanager
def running_stats_kept(module: nn.Module):
    """Within this block, the batch norms of ``module`` in training mode normalise with their batch's
    statistics as ever, but their running statistics and batch count are put back as they were on
    leaving it: the recomputation of a checkpointed chunk must not count its batch a second time.
    (Turning ``track_running_stats`` off instead would save fewer tensors for the backward than the
    forward did, which non-reentrant checkpointing refuses.)"""
    live = [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in live]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, before in zip(live, kept):
                for b, old in zip([b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None],
                                  before):
                    b.copy_(old)


def checkpointed(fn: Callable[..., torch.Tensor], module: nn.Module, chunk: int, *frames: torch.Tensor | None
                 ) -> torch.Tensor:
    """``fn(*frames)`` (each input (N, ...) or None, the output (N, ...)) in chunks of ``chunk`` frames,
    each under ``torch.utils.checkpoint``: only the chunk's inputs and output are kept, and its
    activations are recomputed in the backward, with the RNG state of the forward and without
    updating the running statistics of ``module``'s batch norms again (:func:`running_stats_kept`).
    When ``module`` ties the frames of a call together (:func:`couples_frames`), the call is one chunk."""
    n = len(frames[0])
    if n == 0:
        return fn(*frames)
    size = n if couples_frames(module) else chunk
    contexts = lambda: (nullcontext(), running_stats_kept(module))  # noqa: E731 (forward, recomputation)
    parts = [checkpoint(fn, *(x if x is None else x[i:i + size] for x in frames), use_reentrant=False,
                        preserve_rng_state=True, context_fn=contexts)
             for i in range(0, n, size)]  # (<= size, ...) each
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # (N, ...)


class FusionMethod(nn.Module):
    """Base of the fusion methods: the shared options, unit conversion, the joint loss and frozen norms.

    A subclass implements ``from_pretrained(models, half_cube_mm, cfg)`` and ``forward(depth, centre,
    mask)`` (the module docstring says what it returns); :func:`handfuse.methods.register_method`
    names it.  Fine-tuning tells it the epoch before every step (:meth:`at_epoch`), so anything that
    changes over training reads it here, as :meth:`p_eq_now` and :meth:`p_true_now` do; and every
    batch's true labels before its forward (:meth:`see_labels`), which only the feeds that use the
    truth read (scheduled sampling, the oracle ``eval_feed="true"``)."""

    def __init__(self, cfg: FusionConfig, half_cube_mm: float):
        super().__init__()
        self.cfg, self.half_cube = cfg, float(half_cube_mm)
        self.epoch, self.epochs = 0, 1
        self.labels: torch.Tensor | None = None

    def at_epoch(self, epoch: int, epochs: int) -> None:
        """Fine-tuning is at ``epoch`` (from 0) of ``epochs``."""
        self.epoch, self.epochs = epoch, epochs

    def see_labels(self, labels: torch.Tensor | None) -> None:
        """The true actions (B,) of the batch the next forward runs on (None: unknown)."""
        self.labels = labels

    def p_eq_now(self) -> float:
        """The coin's probability of feeding w_eq at the current epoch: ``cfg.p_eq_schedule`` applied to ``cfg.p_eq``."""
        return P_EQ_SCHEDULES[self.cfg.p_eq_schedule](self.cfg.p_eq, self.epoch, self.epochs)

    def p_true_now(self) -> float:
        """Scheduled sampling's probability of feeding the true action at the current epoch."""
        return P_EQ_SCHEDULES[self.cfg.p_true_schedule](self.cfg.p_true, self.epoch, self.epochs)

    def true_action(self, like: torch.Tensor) -> torch.Tensor:
        """The one-hot true actions (B, 45) of the current batch (:meth:`see_labels`), as ``like``'s
        device and dtype.  Refused when no labels were given."""
        if self.labels is None:
            raise ConfigError("fusion.eval_feed" if not self.training else "fusion.p_true",
                              self.cfg.eval_feed if not self.training else self.cfg.p_true,
                              "a feed of the true action needs the batch's labels: call model.see_labels(batch['label'])"
                              " before forward (FusionTask and evaluate_sequences do)")
        return one_hot_action(self.labels, like.device, like.dtype)

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

    def run_hpe(self, hpe: nn.Module, fn: Callable[..., torch.Tensor], *frames: torch.Tensor | None) -> torch.Tensor:
        """``fn(*frames)``: pose estimator ``hpe`` run by ``fn`` on a batch of frames (every input (N, ...)
        or None, the output (N, ...)).  With ``cfg.activation_checkpoint`` and a gradient to record, the
        frames go in checkpointed chunks of that many (:func:`checkpointed`): the memory of the
        estimator's activations shrinks from N frames' to one chunk's, and the backward pays for it
        by running the chunks' forward again.  Without, ``fn(*frames)`` as it is."""
        chunk = self.cfg.activation_checkpoint
        if not chunk or not torch.is_grad_enabled() or not (
                any(x is not None and x.requires_grad for x in frames) or any(p.requires_grad for p in hpe.parameters())):
            return fn(*frames)
        return checkpointed(fn, hpe, chunk, *frames)

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


def see_labels(model: nn.Module, labels: torch.Tensor) -> None:
    """Tell a fusion method the batch's true labels (:meth:`FusionMethod.see_labels`); a method
    registered from elsewhere without that hook is left alone."""
    if hasattr(model, "see_labels"):
        model.see_labels(labels)


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
            see_labels(model, batch["label"])
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

