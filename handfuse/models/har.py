"""Pose-based hand action recognition: an LSTM over skeleton sequences, with optional temporal attention.

After Zhu et al. 2016, "Co-occurrence Feature Learning for Skeleton based Action
Recognition using Regularized Deep LSTM Networks" (AAAI), as used by the 2019
study this package reproduces: each frame's 21 x 3 joints (centred, in 100 mm
units, see ``handfuse.datasets.pose_features``) are flattened to 63 numbers and
fed to an LSTM (hidden 100, one layer); a linear layer maps every step's output
``h_t`` to 45 action logits ``y_t``, so that a fusion method can read an action
after every frame.

The sequence's logits are either

* ``y_t`` at the last valid step (``attention=False``, the original's baseline), or
* temporal attention (the original's best variant): a score per step from
  ``[y_t; h_t]`` through a linear layer to a scalar and a ReLU, a softmax over the
  *valid* steps only, and the attention-weighted sum of the ``y_t``.  The score's
  bias starts at +1 so that the ReLU starts alive (see :class:`TemporalAttention`);
  where every score of a sequence is zero (the ReLU dead there) the weights are
  uniform, so the readout falls back to the mean of the per-step logits.

Variable lengths: padding comes after the valid steps and the LSTM is causal, so
padded steps cannot reach a valid step's output; they are zeroed on the way in
(so that even NaN padding stays harmless) and masked out of every output, the
readout and the loss (no gradient flows through them).  A sequence thus gets the
same prediction alone or padded in any batch (``tests/test_har.py`` checks it).
This is equivalent to ``pack_padded_sequence`` and, on CPU, faster to train for
FPHA-like length spreads (packing runs the recurrence with a batch size that changes
every step; docs/benchmarks.md).  The final LSTM state is not used, and it would be the
padded one.

:meth:`PoseLSTM.init_state` and :meth:`PoseLSTM.step` run the same network one
frame at a time (for action feedback, where the action after frame t conditions
the pose estimate of frame t+1); stepping reproduces the per-step logits of the
full forward, :meth:`PoseLSTM.hidden` reads ``h_t`` from a stepped state, and
:meth:`PoseLSTM.readout` turns stepped outputs into the same sequence logits: the
``ActionRecogniser`` interface of :mod:`handfuse.models.interfaces` (registered as
``"lstm"``).  :func:`sequence_readout` and :func:`sequence_loss` are shared with
the other recognisers.

Input (``HARConfig.frame``): ``"camera"`` (the original) flattens the joints as
they come; ``"hand"`` (beyond the original, a standard skeleton-action step) feeds
each frame in the hand's own frame instead (:func:`hand_frame`): the joints relative
to the wrist, rotated into axes the palm defines, beside the wrist's position and
the hand's orientation, so that a finger articulation of 10-25 mm is not drowned
by how the whole hand is turned; ``"angles"`` (:func:`angle_features`) feeds the
hand's 19 joint angles (15 flexions, 4 spreads), their change since the previous
frame, the wrist's position and the hand's orientation: the articulation itself,
whatever the hand's size, place or turn, and how it moves (another standard
skeleton-action input).  Stepping carries the previous frame's angles in the
state, so that :meth:`PoseLSTM.step` still reproduces the full forward.  ``"camera+distances"`` feeds
the camera's joints beside the distance between every pair of joints (:func:`joint_distances`, DD-Net's
joint collection distances), which read the articulation without the palm axes or short bones that
make the hand frame and the angles fragile on predicted joints.  Two training-only augmentations:
``jitter_mm`` (noise on every joint) and ``rotate_deg`` (each sequence turned as a whole,
:func:`rotate_sequences`).

Loss (:meth:`PoseLSTM.loss`): cross-entropy on the sequence logits, as the
original.  ``step_loss > 0`` adds that weight times the mean cross-entropy of
every valid step's logits (an auxiliary loss the original did not use; default 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check, is_int
from ..skeleton import JOINT_INDEX, NUM_ACTIONS, NUM_JOINTS
from .flops import forward_flops

IN_FEATURES = NUM_JOINTS * 3  # 63 numbers per frame
HAND_FEATURES = NUM_JOINTS * 3 + 3 + 6  # the hand frame: 63 local coordinates, the wrist, two axes
POSE_UNIT_MM = 100.0  # the recogniser's joints are in these units (handfuse.datasets.POSE_SCALE_MM)
NUM_ANGLES = 19  # per finger the flexion at its MCP, PIP and DIP (15), and the spread of neighbouring fingers (4)
ANGLE_FEATURES = 2 * NUM_ANGLES + 3 + 6  # the angles, their change since the previous frame, the wrist, two axes
DISTANCE_FEATURES = NUM_JOINTS * (NUM_JOINTS - 1) // 2  # every pair of joints once: 210
FRAMES = ("camera", "hand", "angles", "camera+angles", "camera+distances")
_PAIRS = torch.triu_indices(NUM_JOINTS, NUM_JOINTS, 1)  # (2, 210): the joint pairs of joint_distances
_WRIST, _INDEX, _MIDDLE, _PINKY = (JOINT_INDEX[j] for j in ("Wrist", "IMCP", "MMCP", "PMCP"))
# per finger (thumb first): the chain wrist, MCP, PIP, DIP, tip
_CHAINS = [[JOINT_INDEX[j] for j in ("Wrist", f"{f}MCP", f"{f}PIP", f"{f}DIP", f"{f}TIP")] for f in "TIMRP"]


def hand_frame(joints: torch.Tensor) -> torch.Tensor:
    """(..., 21, 3) joints -> (..., 72) features in the hand's own frame: every joint minus the
    wrist, in axes the palm defines (x: wrist to middle MCP; z: the palm's normal, from the index
    and pinky MCPs; y completes them), then the wrist's position and the x and y axes (the hand's
    orientation, 6 numbers).  Rotating the whole hand changes only the last 9 numbers."""
    wrist = joints[..., _WRIST, :]  # (..., 3)
    rel = joints - wrist[..., None, :]  # (..., 21, 3)
    x = F.normalize(rel[..., _MIDDLE, :], dim=-1, eps=1e-6)
    z = F.normalize(torch.linalg.cross(rel[..., _INDEX, :], rel[..., _PINKY, :], dim=-1), dim=-1, eps=1e-6)
    y = torch.linalg.cross(z, x, dim=-1)
    axes = torch.stack([x, y, z], -2)  # (..., 3, 3), rows: the hand's axes in camera coordinates
    local = rel @ axes.transpose(-1, -2)  # (..., 21, 3)
    return torch.cat([local.flatten(-2), wrist, x, y], -1)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angle (radians) between vectors a and b (..., 3); atan2 keeps it exact near 0 and pi."""
    return torch.atan2(torch.linalg.cross(a, b, dim=-1).norm(dim=-1), (a * b).sum(-1))


def joint_angles(joints: torch.Tensor) -> torch.Tensor:
    """(..., 21, 3) joints -> (..., 19) angles in radians: for each finger (thumb, index, middle, ring,
    pinky) the bend between consecutive bones at its MCP, PIP and DIP (0: straight), then the spread
    between the first phalanges of neighbouring fingers.  Moving, turning or scaling the hand leaves
    them unchanged."""
    pts = joints[..., _CHAINS, :]  # (..., 5, 5, 3)
    bones = pts[..., 1:, :] - pts[..., :-1, :]  # (..., 5, 4, 3): wrist->MCP, MCP->PIP, PIP->DIP, DIP->tip
    bend = _angle(bones[..., :-1, :], bones[..., 1:, :]).flatten(-2)  # (..., 15)
    first = bones[..., 1, :]  # (..., 5, 3)
    return torch.cat([bend, _angle(first[..., :-1, :], first[..., 1:, :])], -1)


def angle_features(joints: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """(..., T, 21, 3) joints -> (..., T, 47): the :func:`joint_angles`, their change since the previous
    frame (zero on the first; ``previous`` (..., 19) gives the angles of the frame before the first),
    the wrist's position and the hand's x and y axes (as :func:`hand_frame`'s last 9)."""
    angles = joint_angles(joints)  # (..., T, 19)
    before = angles[..., :1, :] if previous is None else previous[..., None, :]
    change = torch.diff(angles, dim=-2, prepend=before)
    return torch.cat([angles, change, hand_frame(joints)[..., -9:]], -1)


def joint_distances(joints: torch.Tensor) -> torch.Tensor:
    """(..., 21, 3) joints -> (..., 210) the distance between every pair of joints (in the joints' units),
    the joint collection distances of Yang et al. 2019 ("Make Skeleton-based Action Recognition Model
    Smaller, Faster and Better", DD-Net).  Moving or turning the hand changes none of them; a finger's
    articulation changes those of its joints directly, without the palm axes or short bones that make
    :func:`hand_frame` and :func:`joint_angles` sensitive to joint noise."""
    return (joints[..., _PAIRS[0], :] - joints[..., _PAIRS[1], :]).norm(dim=-1)


def rotate_sequences(joints: torch.Tensor, std_deg: float) -> torch.Tensor:
    """(B, T, 21, 3) joints -> the same, each sequence turned as a whole about the origin (where
    :func:`handfuse.datasets.pose_features` puts its first frame's middle MCP) by a random rotation:
    an angle about each axis drawn from N(0, ``std_deg``)."""
    a, b, c = (torch.randn(3, joints.shape[0], device=joints.device, dtype=joints.dtype) * std_deg).deg2rad()
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, a.cos(), -a.sin(), zero, a.sin(), a.cos()], -1)
    ry = torch.stack([b.cos(), zero, b.sin(), zero, one, zero, -b.sin(), zero, b.cos()], -1)
    rz = torch.stack([c.cos(), -c.sin(), zero, c.sin(), c.cos(), zero, zero, zero, one], -1)
    rotation = (rz.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rx.view(-1, 3, 3))  # (B, 3, 3)
    return joints @ rotation[:, None].transpose(-1, -2)  # each point p -> R p


def frame_features(joints: torch.Tensor, frame: str, previous: torch.Tensor | None = None) -> torch.Tensor:
    """(..., T, 21, 3) joints -> the recogniser's per-frame inputs: flat (63), :func:`hand_frame` (72),
    :func:`angle_features` (47; ``previous`` as there), or the flat joints beside either the angle
    features or the :func:`joint_distances` (210)."""
    if frame == "camera+distances":
        return torch.cat([joints.flatten(-2), joint_distances(joints)], -1)
    if frame == "angles":
        return angle_features(joints, previous)
    if frame == "camera+angles":
        return torch.cat([joints.flatten(-2), angle_features(joints, previous)], -1)
    return hand_frame(joints) if frame == "hand" else joints.flatten(-2)
State = tuple  # LSTM (h, c), each (layers, B, hidden); with the "angles" input also the last angles (B, 19)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class HARConfig:
    """The action recogniser.  Defaults are the original's (hidden 100, one layer)."""

    hidden: int = 100  # LSTM units per layer
    layers: int = 1  # stacked LSTM layers
    dropout: float = 0.0  # on every LSTM layer's output (between layers and before the classifier)
    attention: bool = False  # temporal attention readout instead of the last valid step
    step_loss: float = 0.0  # weight of the auxiliary per-step cross-entropy (0: the original, none)
    frame: str = "camera"  # the input: "camera" (the original), "hand" (hand_frame), "angles" (angle_features),
    # or the camera's joints beside the angle features ("camera+angles") or joint_distances ("camera+distances")
    jitter_mm: float = 0.0  # training only: Gaussian noise (std, mm) added to every joint of every frame (0: none)
    rotate_deg: float = 0.0  # training only: each sequence turned as a whole, N(0, this) degrees about each axis

    def __post_init__(self):
        check(is_int(self.hidden) and self.hidden >= 1, "har.hidden", self.hidden,
              "an integer >= 1 (LSTM units; the original used 100)")
        check(is_int(self.layers) and self.layers >= 1, "har.layers", self.layers, "an integer >= 1 (stacked LSTMs)")
        check(_is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "har.dropout", self.dropout, "a probability in [0, 1)")
        check(isinstance(self.attention, bool), "har.attention", self.attention, "True or False")
        check(_is_number(self.step_loss) and self.step_loss >= 0.0, "har.step_loss", self.step_loss, "a weight >= 0")
        check(self.frame in FRAMES, "har.frame", self.frame, f"one of {FRAMES}")
        check(_is_number(self.jitter_mm) and self.jitter_mm >= 0.0, "har.jitter_mm", self.jitter_mm, "a noise level >= 0 (mm)")
        check(_is_number(self.rotate_deg) and self.rotate_deg >= 0.0, "har.rotate_deg", self.rotate_deg,
              "a rotation spread >= 0 (degrees)")

    @property
    def in_features(self) -> int:
        return {"hand": HAND_FEATURES, "angles": ANGLE_FEATURES, "camera+angles": IN_FEATURES + ANGLE_FEATURES,
                "camera+distances": IN_FEATURES + DISTANCE_FEATURES}.get(self.frame, IN_FEATURES)


def lengths_of(mask: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a (B, T) validity mask, which must be True on a non-empty prefix of each row."""
    lengths = mask.sum(1)  # (B,)
    steps = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, steps[None, :] < lengths[:, None]) or bool((lengths == 0).any()):
        raise ValueError("mask must be True on a non-empty prefix of every sequence (valid steps first)")
    return lengths


class TemporalAttention(nn.Module):
    """Weights over valid steps from ``[y_t; h_t]``: ReLU(linear to a scalar), then a masked softmax."""

    def __init__(self, classes: int, hidden: int):
        super().__init__()
        self.score = nn.Linear(classes + hidden, 1)
        # The softmax ignores a shift common to all steps, so the bias only decides where the ReLU
        # is alive.  A default (random, often negative) bias can start every score dead: uniform
        # weights and no gradient, ever.  Starting at +1 puts the scores in the ReLU's linear part.
        nn.init.constant_(self.score.bias, 1.0)

    def forward(self, step_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = F.relu(self.score(torch.cat([step_logits, hidden], -1))).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)  # (B, T), exactly 0 on padding


class PoseLSTM(nn.Module):
    """LSTM action recogniser on (B, T, 21, 3) pose sequences; see the module docstring."""

    def __init__(self, cfg: HARConfig = HARConfig(), num_classes: int = NUM_ACTIONS):
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(cfg.in_features, cfg.hidden, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, num_classes)
        self.attention = TemporalAttention(num_classes, cfg.hidden) if cfg.attention else None

    def readout(self, step_logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequence logits (B, C) and attention weights (B, T) (None without attention) from the
        per-step logits (B, T, C), the top LSTM layer's outputs (B, T, H) and the mask (B, T)."""
        return sequence_readout(self.attention, step_logits, hidden, mask)

    def forward(self, joints: torch.Tensor, mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """``joints`` (B, T, 21, 3), ``mask`` (B, T) bool True on valid steps (all if None).

        Returns ``step_logits`` (B, T, C) (zero on padding), ``logits`` (B, C), ``attention``
        (B, T) or None, ``hidden`` (B, T, H) the top layer's outputs (zero on padding), and
        ``loss`` when ``labels`` (B,) are given."""
        if self.training and self.cfg.jitter_mm > 0:
            joints = joints + torch.randn_like(joints) * (self.cfg.jitter_mm / POSE_UNIT_MM)
        if self.training and self.cfg.rotate_deg > 0:
            joints = rotate_sequences(joints, self.cfg.rotate_deg)
        x, mask = sequence_input(joints, mask, self.cfg.frame)  # (B, T, F), (B, T)
        hidden, _ = self.lstm(x)  # (B, T, H); causal, so padding comes too late
        return sequence_outputs(self, hidden, mask, labels)

    def loss(self, out: dict, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of ``out["logits"]`` against ``labels`` (B,), plus ``step_loss`` times the
        mean cross-entropy over valid steps of ``out["step_logits"]`` (needs ``mask`` if padded)."""
        return sequence_loss(out, labels, mask, self.cfg.step_loss)

    def init_state(self, batch: int) -> State:
        """The zero LSTM state (h, c) for ``batch`` sequences, each (layers, B, hidden); with the
        ``"angles"`` input a third entry holds the previous frame's angles (None before the first)."""
        p = self.classifier.weight
        zeros = torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=p.device, dtype=p.dtype)
        return (zeros, zeros.clone(), None) if "angles" in self.cfg.frame else (zeros, zeros.clone())

    def step(self, joints_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One frame ``joints_t`` (B, 21, 3) -> its step logits (B, C) and the new state.
        The top layer's output ``h_t`` (B, H), which :meth:`readout` needs, is :meth:`hidden` of it."""
        x = frame_features(joints_t[:, None], self.cfg.frame, *state[2:])  # (B, 1, F)
        out, hc = self.lstm(x, state[:2])  # (B, 1, H)
        if "angles" in self.cfg.frame:
            hc = (*hc, joint_angles(joints_t))
        return self.classifier(self.drop(out[:, 0])), hc  # (B, C)

    def hidden(self, state: State) -> torch.Tensor:
        """The top layer's output ``h_t`` (B, H) of the last step, from a state :meth:`step` returned."""
        return state[0][-1]


def sequence_input(joints: torch.Tensor, mask: torch.Tensor | None,
                   frame: str = "camera") -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (B, T, 21, 3) and a mask (B, T) (None: all valid; holes and empty sequences refused)
    -> the per-frame inputs (B, T, F) of :func:`frame_features`, zero on padding, and the mask."""
    B, T = joints.shape[:2]
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=joints.device)
    if mask.shape != (B, T):
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, T) = {(B, T)}")
    lengths_of(mask)  # refuses holes and empty sequences
    joints = torch.where(mask[..., None, None], joints, 0.0)  # padding (NaN even) never reaches the features
    if frame != "camera":  # padding gets the features of an all-zero hand: finite, and masked out downstream
        return torch.where(mask[..., None], frame_features(joints, frame), 0.0), mask
    return joints.reshape(B, T, IN_FEATURES), mask


def sequence_outputs(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """The common end of a recogniser's forward, from its per-step features ``hidden`` (B, T, H):
    ``model.classifier`` per step, ``model.readout`` over the steps, and ``model.loss`` given labels;
    everything is zero on padding.  See :meth:`PoseLSTM.forward` for the outputs."""
    valid = mask[..., None]  # (B, T, 1)
    hidden = torch.where(valid, hidden, 0.0)
    step_logits = torch.where(valid, model.classifier(model.drop(hidden)), 0.0)  # (B, T, C)
    logits, weights = model.readout(step_logits, hidden, mask)
    result = {"step_logits": step_logits, "logits": logits, "attention": weights, "hidden": hidden}
    if labels is not None:
        result["loss"] = model.loss(result, labels, mask)
    return result


def sequence_readout(attention: TemporalAttention | None, step_logits: torch.Tensor, hidden: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sequence logits (B, C) of any recogniser with per-step logits (B, T, C) and features
    (B, T, H): the last valid step's logits (``attention`` None; weights None) or the
    ``attention``-weighted sum over the valid steps (weights (B, T))."""
    if attention is None:
        last = lengths_of(mask) - 1  # (B,)
        return step_logits[torch.arange(len(last), device=last.device), last], None  # (B, C)
    weights = attention(step_logits, hidden, mask)  # (B, T)
    return torch.einsum("bt,btc->bc", weights, step_logits), weights  # (B, C)


def sequence_loss(out: dict, labels: torch.Tensor, mask: torch.Tensor | None, step_loss: float) -> torch.Tensor:
    """Cross-entropy of ``out["logits"]`` (B, C) against ``labels`` (B,), plus ``step_loss`` times the
    mean cross-entropy of ``out["step_logits"]`` (B, T, C) over the valid steps of ``mask`` (B, T)."""
    loss = F.cross_entropy(out["logits"], labels)
    if step_loss > 0:
        step_logits = out["step_logits"]  # (B, T, C)
        if mask is None:
            mask = torch.ones(step_logits.shape[:2], dtype=torch.bool, device=step_logits.device)
        per_step = F.cross_entropy(step_logits[mask], labels[:, None].expand(mask.shape)[mask])
        loss = loss + step_loss * per_step
    return loss


def count_sequence_flops(model: nn.Module, steps: int) -> int:
    """Forward FLOPs of any action recogniser on one sequence of ``steps`` frames (eval mode; a
    multiply-add counts 2).  ``torch.utils.flop_counter`` counts matrix products but not a fused
    ``nn.LSTM`` (one opaque kernel on CPU), so each LSTM's gate products are added by hand:
    ``2 * 4H * (input + H)`` per step and layer."""
    p = next(model.parameters())
    counter = forward_flops(model, torch.zeros(1, steps, NUM_JOINTS, 3, device=p.device, dtype=p.dtype))
    counted = counter.get_flop_counts()  # per module path, e.g. "PoseLSTM.lstm"
    lstm = sum(2 * 4 * m.hidden_size * ((m.input_size if i == 0 else m.hidden_size) + m.hidden_size) * steps
               for name, m in model.named_modules() if isinstance(m, nn.LSTM)
               and not any(k.endswith("." + name) and sum(v.values()) for k, v in counted.items())
               for i in range(m.num_layers))
    return int(counter.get_total_flops()) + lstm
