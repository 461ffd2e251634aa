"""Method #2, sequential action feedback: the action after frame t conditions the pose of frame t+1.

The 2019 study's second method.  A FiLM-conditioned HPE (Perez et al. 2018, see
:mod:`handfuse.models.film`) estimates frame t+1's pose given the HAR's action
distribution after frame t; frame 0 is fed ``w_eq = 1/45``.  The HPE was
pre-trained on ``w_eq`` only, so it starts as a plain HPE.

Fine-tuning (``self.training``): each step feeds ``w_eq`` with probability
``p_eq`` (``coin="step"``: one draw per step for the whole batch, the original;
``"item"``: one per sequence and step), else the prediction, perturbed by the
``noise`` of :mod:`handfuse.methods.noise` when one is set (noisy feedback).
``feedback_grad`` says whether gradients flow back through the fed action.

Scheduled sampling (``p_true`` > 0, beyond the original): each training step
after frame 0 is first fed the *true* action with probability ``p_true``
(scheduled over the epochs by ``p_true_schedule``, e.g. ``"linear_decay"``: the
truth early, the model's own prediction later); the p_eq coin decides the rest.
A late action (``feed_after = k``): frames before k are fed ``w_eq``, in training
and evaluation.

Evaluation is deterministic, never a coin: ``eval_feed="prediction"`` (the
method) feeds every step the clean prediction, ``"w_eq"`` feeds ``w_eq`` everywhere
(the conditioned HPE as a plain one: this *is* p_eq = 1), ``"mix"`` feeds
``eval_mix * w_eq + (1 - eval_mix) * prediction``, the coin's expectation, which
the untrained p_eq sweep uses, and ``"true"`` feeds the true action on every frame,
frame 0 included: the oracle, the best these weights can do with a perfect recogniser.

Speed.  Frames fed ``w_eq`` do not depend on the HAR, so they all go through the
HPE in one batch first; only the frames fed a prediction run step by step, each
step batched across the sequences.  With FiLM in the FC layers only (``film="fc"``)
the conv trunk ignores the action: it runs once for every frame in one batch and
the steps only re-run the FC head.  With frozen batch norm (the default) each
frame's pose is independent of its batch mates, so none of this changes a number.

Memory.  With ``activation_checkpoint`` every HPE call goes through
:meth:`~handfuse.methods.common.FusionMethod.run_hpe`: the batched frames (the trunk of
``film="fc"``, the frames fed ``w_eq``) in checkpointed chunks, and each step's call too, so no
step keeps the trunk's activations for the backward.
"""
from __future__ import annotations

import copy

import torch

from ..datasets import pose_features
from ..errors import ConfigError
from ..models.film import CONDITIONED, uniform_action
from ..models.interfaces import ActionRecogniser, PoseEstimator
from .common import FusionConfig, FusionMethod, conditioned_copy, frame_index, scatter_frames, true_mask, w_eq_mask


class ActionFeedback(FusionMethod):
    def __init__(self, hpe: PoseEstimator, har: ActionRecogniser, half_cube_mm: float, cfg: FusionConfig = FusionConfig()):
        super().__init__(cfg, half_cube_mm)
        if not hpe.accepts_action:
            raise ConfigError("hpe.film", "none", f"a FiLM placement (one of {CONDITIONED}): feedback conditions the HPE")
        self.hpe, self.har = hpe, har
        self.set_trainable(self.hpe, cfg.train_hpe)
        self.set_trainable(self.har, cfg.train_har)

    @classmethod
    def from_pretrained(cls, models, half_cube_mm: float, cfg: FusionConfig) -> ActionFeedback:
        return cls(conditioned_copy(models.hpe_film, cfg), copy.deepcopy(models.har), half_cube_mm, cfg)

    def _pose_runner(self, depth: torch.Tensor, mask: torch.Tensor):
        """A function (frames (B, T) bool, actions (n, 45)) -> normalised joints (n, 21, 3) of those frames.
        What ignores the action (all but the FC head's FiLM and after, with FiLM in the FC layers)
        runs once, for every valid frame, in one batch."""
        shared = self.run_hpe(self.hpe, self.hpe.before_action, depth[mask])  # (N, ...)
        index = frame_index(mask)  # (B, T)
        finish = lambda x, action: self.hpe.after_action(x, action)["joints"]  # noqa: E731
        return lambda frames, action: self.run_hpe(self.hpe, finish, shared[index[frames]], action)

    def forward(self, depth: torch.Tensor, centre: torch.Tensor, mask: torch.Tensor) -> dict:
        """``depth`` (B, T, 1, S, S), ``centre`` (B, T, 3) mm, ``mask`` (B, T) -> ``joints_mm``
        (B, T, 21, 3), ``logits`` (B, 45), ``step_logits`` (B, T, 45), ``attention`` (B, T) or None,
        ``hidden`` (B, T, H), ``fed_w_eq`` and ``fed_true`` (B, T): which frames were fed w_eq, the truth."""
        B, T = mask.shape
        run = self._pose_runner(depth, mask)
        fed_true = true_mask(mask, self.cfg, self.training, self.p_true_now())  # (B, T): scheduled sampling, oracle
        fed_w_eq = w_eq_mask(mask, self.cfg, self.training, p_eq=self.p_eq_now()) & ~fed_true  # (B, T)
        joints_w_eq = self._fixed_feed(run, mask & fed_w_eq, uniform_action(B, depth.device), centre)
        if bool(fed_true.any()):  # these frames do not wait for the HAR either
            truth = self._fixed_feed(run, fed_true, self.true_action(depth), centre)
            joints_w_eq = torch.where(fed_true[..., None, None], truth, joints_w_eq)
        fixed = fed_w_eq | fed_true  # the frames whose action is known before the HAR runs

        state, action = self.har.init_state(B), None
        joints, step_logits, hidden = [], [], []
        for t in range(T):
            j_t = joints_w_eq[:, t]  # (B, 21, 3)
            live = mask[:, t] & ~fixed[:, t]  # (B,) frames fed the previous step's prediction
            if bool(live.any()):
                frames = torch.zeros_like(mask)
                frames[:, t] = live
                rows = live.nonzero()[:, 0]
                fresh = self.to_mm(run(frames, action[rows]), centre[rows, t])  # (n, 21, 3)
                j_t = j_t.index_put((rows,), fresh)
            joints.append(j_t)
            # the HAR's input for this frame: the same transform as the baseline (relative to frame 0)
            x_t = pose_features(torch.stack([joints[0], j_t], 1))[:, 1]  # (B, 21, 3)
            logits_t, state = self.har.step(x_t, state)  # (B, 45)
            step_logits.append(logits_t)
            hidden.append(self.har.hidden(state))  # (B, H)
            action = self.fed_action(logits_t)
        valid = mask[..., None]
        joints = torch.where(mask[..., None, None], torch.stack(joints, 1), 0.0)  # (B, T, 21, 3)
        step_logits = torch.where(valid, torch.stack(step_logits, 1), 0.0)  # (B, T, 45)
        hidden = torch.where(valid, torch.stack(hidden, 1), 0.0)  # (B, T, H)
        logits, attention = self.har.readout(step_logits, hidden, mask)
        return {"joints_mm": joints, "logits": logits, "step_logits": step_logits, "attention": attention,
                "hidden": hidden, "fed_w_eq": fed_w_eq & mask, "fed_true": fed_true}

    def _fixed_feed(self, run, frames: torch.Tensor, actions: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Joints in mm (B, T, 21, 3) of ``frames`` (B, T) fed a per-sequence action ``actions`` (B, 45)
        that does not depend on the HAR, all in one batch (zero elsewhere)."""
        if not bool(frames.any()):  # the oracle feeds no frame w_eq
            return centre.new_zeros(*frames.shape, 21, 3)
        per_frame = actions[:, None].expand(*frames.shape, actions.shape[-1])[frames]  # (n, 45)
        return scatter_frames(self.to_mm(run(frames, per_frame), centre[frames]), frames)
