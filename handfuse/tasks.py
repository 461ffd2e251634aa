"""Training tasks for ``handfuse.train.fit``: how to batch, compute the loss and evaluate.

* :class:`HPETask`: frames of the crop cache -> 21 joints (DeepPrior++ loss in PCA
  space), evaluated as mean per-joint 3-D error in mm.
* :class:`HARTask`: pose sequences -> one of 45 actions, evaluated as accuracy.

Both hold three splits: ``train`` and ``val`` come from the training side of the
action split (:func:`split_train_val` holds out whole sequences, per class), and
``test`` is the test side, which ``fit`` evaluates once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import CropCache
from . import graphs
from .datasets import FrameDataset, PoseSequenceDataset, collate_sequences, resident_crops
from .fpha import SequenceRef
from .models.film import one_hot_action
from .metrics import accuracy, confusion_matrix, mean_joint_error, per_class_accuracy, per_joint_error, success_curve
from .skeleton import NUM_ACTIONS
from .distributed import epoch_batches, rank_world
from .train import epoch_generator, to_device


def split_train_val(refs: list[SequenceRef], fraction: float, seed: int) -> tuple[list[SequenceRef], list[SequenceRef]]:
    """Hold out about ``fraction`` of each class's sequences (at least one where a class has two
    or more) for validation: (train, val), deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 7919])
    train, val = [], []
    for label in sorted({r.label for r in refs}):
        group = [r for r in refs if r.label == label]
        order = rng.permutation(len(group))
        n_val = min(len(group) - 1, max(1, int(round(fraction * len(group))))) if len(group) > 1 else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


def sequence_batches(ds, epoch: int, cfg, salt: int):
    """One epoch of collated, padded batches of a sequence dataset: this process's shuffled shard
    (``handfuse.distributed.epoch_batches``; ``salt`` separates tasks), at most ``cfg.max_batches``."""
    chunks = epoch_batches(len(ds), cfg.batch_size, cfg.seed, epoch, salt=salt)
    for idx in chunks[: cfg.max_batches or len(chunks)]:
        yield collate_sequences([ds[i] for i in idx])


# What a FiLM-conditioned HPE is fed while pre-training (HPETask.feed):
#   "w_eq"    the uniform action, in training and evaluation (the original; a plain HPE);
#   "true"    the true action's one-hot, in training and evaluation: the oracle, an HPE that knows the action;
#   "mix"     a curriculum, per item: a third each the true one-hot, w_eq, and the true one-hot moved by
#             Dirichlet noise (noisy feedback's, level 0.5); evaluated on w_eq;
#   "smooth"  label smoothing: every item fed 0.5 * true one-hot + 0.5 * w_eq; evaluated on w_eq.
PRETRAIN_FEEDS = ("w_eq", "true", "mix", "smooth")


@dataclass
class HPETask:
    """Frame-wise pose estimation from the crop cache.  ``augment`` (an ``AugmentConfig`` or None)
    is applied to training batches only.  A FiLM-conditioned model is fed what ``feed`` says
    (:data:`PRETRAIN_FEEDS`; w_eq = 1/45 by default); its test scores also hold
    ``error_mm_true_action``, the error when fed the true action.

    With ``graphs`` on CUDA (``TrainConfig.graphs``) its batches all have one shape (the ragged last
    one is dropped), so the loop replays each training step as a CUDA graph (``graph_step``);
    evaluation replays a graph per batch shape, and the crops stay on the GPU when they fit."""

    cache: CropCache
    splits: dict[str, list[SequenceRef]]
    augment: object | None = None
    feed: str = "w_eq"
    metric: str = "error_mm"
    higher_is_better: bool = False
    eval_batch: int = 256
    graph_step = True  # every training batch has one shape: handfuse.train may capture the whole step
    _resident: dict = field(default_factory=dict, init=False, repr=False)  # device -> crops on it, or None

    def __post_init__(self):
        self.data = {name: FrameDataset(self.cache, refs) for name, refs in self.splits.items()}
        self.half_cube = self.cache.cfg.cube_mm / 2

    def batches(self, split, epoch, cfg):
        ds = self.data[split]
        gen = epoch_generator(cfg.seed, epoch, 100 + rank_world()[0])  # augmentation: each rank its own draws
        chunks = epoch_batches(len(ds), cfg.batch_size, cfg.seed, epoch, salt=0, drop_last=True)
        crops = self.crops_on(cfg.device) if cfg.graphs else None
        for idx in chunks[: cfg.max_batches or len(chunks)]:
            batch = ds.batch(idx, crops)
            if self.augment is not None:
                from .augment import augment_batch

                if torch.device(cfg.device).type == "cuda":  # warp on the GPU (the same draws, from the CPU generator)
                    batch = to_device(batch, cfg.device)
                batch["depth"], batch["joints"] = augment_batch(batch["depth"], batch["joints"], self.augment,
                                                                self.half_cube, generator=gen)
            yield batch

    def crops_on(self, device) -> torch.Tensor | None:
        """The crop cache on a CUDA ``device`` when it fits (:func:`handfuse.datasets.resident_crops`,
        copied once per task), else None: CPU, or too little free GPU memory."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        if device not in self._resident:
            self._resident[device] = resident_crops(self.cache, device)
        return self._resident[device]

    def loss(self, model, batch):
        out = model(batch["depth"], self.action(batch["label"], batch["depth"], training=True))
        return model.loss(out, batch["joints"])

    def action(self, labels: torch.Tensor, like: torch.Tensor, training: bool) -> torch.Tensor | None:
        """What the model is fed for a batch of frames with true ``labels`` (B,): None (w_eq) or (B, 45)."""
        if self.feed == "w_eq" or (not training and self.feed != "true"):
            return None
        true = one_hot_action(labels, like.device)
        if self.feed == "true":
            return true
        w_eq = torch.full_like(true, 1.0 / NUM_ACTIONS)
        if self.feed == "smooth":
            return 0.5 * true + 0.5 * w_eq
        from .methods.noise import perturb  # "mix": per item, the truth, w_eq or the noisy truth

        pick = torch.randint(0, 3, (len(true), 1), device=true.device)
        return torch.where(pick == 0, true, torch.where(pick == 1, w_eq, perturb(true, "dirichlet", 0.5)))

    def predict(self, model, split: str, action: torch.Tensor | None = None, fed_truth: bool | None = None,
                graphed: bool = False) -> np.ndarray:
        """(N, 21, 3) predicted joints in mm for every frame of a split, in dataset order, fed ``action``
        (None: w_eq) or, with ``fed_truth``, each frame's true action (default: as ``feed`` evaluates).
        ``graphed`` (CUDA only): each batch shape replayed as a CUDA graph, crops from the GPU when they fit."""
        ds, device = self.data[split], next(model.parameters()).device
        fed_truth = (self.feed == "true") if fed_truth is None else fed_truth
        graphed = graphs.active(graphed, device)
        crops = self.crops_on(device) if graphed else None
        model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(ds), self.eval_batch):
                batch = ds.batch(np.arange(start, min(start + self.eval_batch, len(ds))), crops)
                fed = one_hot_action(batch["label"], device) if fed_truth else action
                x = batch["depth"].to(device)
                pred = (graphs.infer(model, x, fed) if graphed else model(x, fed)["joints"]).float().cpu()
                out.append(pred * self.half_cube + batch["centre"][:, None])
        return torch.cat(out).numpy()

    def evaluate(self, model, split, cfg=None):
        """Scores of ``model`` on a split; ``cfg`` (a TrainConfig, or None: eager) says whether to replay graphs."""
        graphed = bool(cfg is not None and cfg.graphs)
        pred = self.predict(model, split, graphed=graphed)
        true = self.cache.joints[self.data[split].rows]
        thresholds, curve = success_curve(pred, true, np.arange(0, 81, 5))
        scores = {"error_mm": float(mean_joint_error(pred, true)), "per_joint_mm": per_joint_error(pred, true).tolist(),
                  "success_thresholds_mm": list(map(float, thresholds)), "success": list(map(float, curve))}
        if split == "test" and getattr(model, "accepts_action", False):  # the oracle was just scored fed the truth
            scores["error_mm_true_action"] = scores["error_mm"] if self.feed == "true" else \
                float(mean_joint_error(self.predict(model, split, fed_truth=True, graphed=graphed), true))
        return scores


@dataclass
class HARTask:
    """Action recognition from pose sequences (ground truth, or any poses via PoseSequenceDataset.from_joints)."""

    data: dict[str, PoseSequenceDataset]
    metric: str = "accuracy"
    higher_is_better: bool = True

    def batches(self, split, epoch, cfg):
        return sequence_batches(self.data[split], epoch, cfg, salt=1)

    def loss(self, model, batch):
        return model.loss(model(batch["joints"], batch["mask"]), batch["label"], batch["mask"])

    def outputs(self, model, split: str, batch_size: int = 64) -> dict[str, list]:
        """Per sequence: logits (45,), per-step logits (T, 45), attention (T,) or None."""
        ds, device = self.data[split], next(model.parameters()).device
        model.eval()
        logits, steps, attention = [], [], []
        with torch.inference_mode():
            for start in range(0, len(ds), batch_size):
                batch = collate_sequences([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
                out = model(batch["joints"].to(device), batch["mask"].to(device))
                for b, n in enumerate(batch["length"].tolist()):
                    logits.append(out["logits"][b].float().cpu().numpy())
                    steps.append(out["step_logits"][b, :n].float().cpu().numpy())
                    att = out.get("attention")
                    attention.append(None if att is None else att[b, :n].float().cpu().numpy())
        return {"logits": logits, "step_logits": steps, "attention": attention}

    def evaluate(self, model, split, cfg):
        ds = self.data[split]
        pred = np.array([lg.argmax() for lg in self.outputs(model, split)["logits"]])
        labels = np.asarray(ds.labels)
        return {"accuracy": float(accuracy(pred, labels)),
                "per_class": per_class_accuracy(pred, labels, NUM_ACTIONS).tolist(),
                "confusion": confusion_matrix(pred, labels, NUM_ACTIONS).tolist()}
