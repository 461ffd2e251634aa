"""The two contracts between the fusion methods and the models: a pose estimator and an action recogniser.

The fusion methods (:mod:`handfuse.methods`) talk to the models through these and
nothing else, so any model that implements one of them can be plugged into every
method (``docs/extending.md`` shows a third one; ``tests/test_generality.py``
runs every method over every registered pair).  They are ``typing.Protocol``s:
a model satisfies one by having its attributes, not by inheriting from it, and
``isinstance(model, PoseEstimator)`` checks that the names are there.

Units.  Depth crops are normalised to [-1, 1] around the hand centre; joints are
normalised too: (joints_mm - crop centre) / the cube's half-size, as
``handfuse.datasets`` gives them.  The recogniser reads pose features: every
frame's joints minus the first frame's middle MCP, in 100 mm units
(``handfuse.datasets.pose_features``).  An action is a distribution over the 45
classes, (B, 45); ``w_eq = 1/45`` (``models.film.uniform_action``) means "no
action known".  Sizes: B items, S the crop side, T steps, C = 45 classes, H a
recogniser's per-step feature width.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

Outputs = dict[str, Any]


@runtime_checkable
class PoseEstimator(Protocol):
    """Depth crops (B, 1, S, S), and an optional action (B, 45), to joints (B, 21, 3), normalised.

    ``cfg`` is a frozen dataclass with at least ``crop`` (S) and ``film`` (where an action
    conditions the network: ``"none"``, or a placement such as ``"blocks"``, ``"fc"``, ``"both"``);
    pre-training sets ``film`` with ``dataclasses.replace``.  A conditioned estimator fed ``w_eq``
    only (pre-training) should be a plain estimator: FiLM layers start at zero for that reason."""

    cfg: Any

    @property
    def accepts_action(self) -> bool:
        """Whether an action conditions the output (``cfg.film != "none"``); feedback and the
        ensemble's second pass need one that does."""
        ...

    def __call__(self, depth: torch.Tensor, action: torch.Tensor | None = None,
                 target: torch.Tensor | None = None) -> Outputs:
        """``depth`` (B, 1, S, S), ``action`` (B, 45) or None (w_eq; ignored when not conditioned),
        ``target`` (B, 21, 3) -> at least ``joints`` (B, 21, 3) and, given a target, ``loss`` (scalar)."""
        ...

    def loss(self, out: Outputs, target: torch.Tensor) -> torch.Tensor:
        """The pre-training loss (scalar) of the outputs against target joints (B, 21, 3)."""
        ...

    def before_action(self, depth: torch.Tensor) -> torch.Tensor:
        """The part of the forward that does not read the action, per frame: (B, ...).  Feedback
        runs it once for every frame of a batch and re-runs only :meth:`after_action` per step.
        When the action enters early, it may simply return ``depth``."""
        ...

    def after_action(self, x: torch.Tensor, action: torch.Tensor | None = None,
                     target: torch.Tensor | None = None) -> Outputs:
        """Finish the forward from :meth:`before_action`'s (B, ...) output: the same outputs as
        calling the model, i.e. ``after_action(before_action(d), a) == model(d, a)``."""
        ...

    @property
    def channels_last_safe(self) -> bool:
        """Whether :meth:`to_channels_last` is safe (and so used on CPU by pre-training)."""
        ...

    def to_channels_last(self) -> torch.nn.Module:
        """Convert the weights to channels_last (faster convolutions on CPU); returns the model."""
        ...


@runtime_checkable
class PosePrior(Protocol):
    """Optional, for an estimator with a linear pose prior (DeepPrior++'s PCA).  Pre-training fits
    it to the training poses; the methods keep it frozen while fine-tuning."""

    def init_pca(self, poses: torch.Tensor) -> float:
        """Fit the prior to (N, 21, 3) normalised training poses; returns the variance explained."""
        ...

    def freeze_pca(self, frozen: bool = True) -> None:
        ...


@runtime_checkable
class ActionRecogniser(Protocol):
    """A pose sequence (B, T, 21, 3) and a mask (B, T) to per-step and sequence logits over 45 actions.

    ``cfg`` is a frozen dataclass with at least ``attention`` (bool: the temporal-attention
    readout instead of the last valid step; pre-training sets it with ``dataclasses.replace``).
    The mask is True on a non-empty prefix of each row (valid steps first); padding must never
    change a valid step's output.  Step t's logits may only depend on steps <= t (causal): action
    feedback reads an action after every frame."""

    cfg: Any

    def __call__(self, joints: torch.Tensor, mask: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> Outputs:
        """``joints`` (B, T, 21, 3) pose features, ``mask`` (B, T) bool (None: all valid), ``labels`` (B,)
        -> ``step_logits`` (B, T, C) and ``hidden`` (B, T, H) (zero on padding), ``logits`` (B, C),
        ``attention`` (B, T) weights over the valid steps or None, and ``loss`` given labels."""
        ...

    def loss(self, out: Outputs, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pre-training loss (scalar) of the outputs against labels (B,)."""
        ...

    def init_state(self, batch: int) -> Any:
        """The state before the first step, for ``batch`` sequences (opaque to the methods)."""
        ...

    def step(self, joints_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One frame (B, 21, 3) -> its step logits (B, C), equal to the forward's ``step_logits[:, t]``,
        and the new state."""
        ...

    def hidden(self, state: Any) -> torch.Tensor:
        """The last step's per-step features h_t (B, H) from a state :meth:`step` returned: the
        forward's ``hidden[:, t]``, which :meth:`readout` needs."""
        ...

    def readout(self, step_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequence logits (B, C) and attention (B, T) or None from stepped outputs: step logits
        (B, T, C), per-step features (B, T, H) and the mask (B, T): the forward's ``logits``."""
        ...
