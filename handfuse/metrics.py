"""Evaluation metrics for hand pose and action, and 95 % intervals over seeds.

Pose (the measures of the hand pose literature, e.g. Oberweger & Lepetit 2017,
DeepPrior++; Garcia-Hernando et al. 2018, FPHA):

* :func:`mean_joint_error`: mean Euclidean 3D distance per joint, in mm;
* :func:`per_joint_error`: the same per joint, (21,);
* :func:`success_curve`: the fraction of frames whose *worst* joint is within d mm,
  for each threshold d (the "fraction of frames within distance" curve).

Action: :func:`accuracy`, :func:`per_class_accuracy` (NaN where a class has no
sample), :func:`confusion_matrix` (rows: true class, columns: predicted).

Seeds: :func:`mean_ci95`, Student's t interval of a mean (scipy is not needed:
the 0.975 quantiles are tabulated for 1..30 degrees of freedom, beyond which a
Cornish-Fisher expansion is exact to about 1e-6).

Inputs may be numpy arrays or torch tensors (detached and moved to the CPU);
results are Python floats or numpy arrays.  Pose arrays are (..., 21, 3) in mm
with any leading frame axes, e.g. (N, 21, 3) or (B, T, 21, 3), and ``mask`` has
those leading axes, True on frames to count.  Action predictions may be labels
(N,) or logits/probabilities (N, C), reduced by argmax.
"""
from __future__ import annotations

import math

import numpy as np

from .skeleton import NUM_ACTIONS


def _np(x) -> np.ndarray:
    """A numpy view of an array or a torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------- pose
def joint_errors(pred_mm, true_mm, mask=None) -> np.ndarray:
    """Per-joint 3D errors (N, J) in mm of the counted frames (``mask`` selects them)."""
    pred, true = _np(pred_mm).astype(np.float64), _np(true_mm).astype(np.float64)
    if pred.shape != true.shape or pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"pred and true must both be (..., J, 3); got {pred.shape} and {true.shape}")
    err = np.linalg.norm(pred - true, axis=-1)  # (..., J)
    if mask is not None:
        mask = _np(mask).astype(bool)
        if mask.shape != err.shape[:-1]:
            raise ValueError(f"mask {mask.shape} must match the frame axes {err.shape[:-1]}")
        err = err[mask]  # (N, J)
    err = err.reshape(-1, err.shape[-1])  # (N, J)
    if len(err) == 0:
        raise ValueError("no frames to evaluate (empty input or an all-False mask)")
    return err


def mean_joint_error(pred_mm, true_mm, mask=None) -> float:
    """Mean per-joint 3D error in mm over all counted frames and joints."""
    return float(joint_errors(pred_mm, true_mm, mask).mean())


def per_joint_error(pred_mm, true_mm, mask=None) -> np.ndarray:
    """Mean 3D error in mm of each joint (J,) over the counted frames."""
    return joint_errors(pred_mm, true_mm, mask).mean(0)


def success_curve(pred_mm, true_mm, thresholds_mm=None, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (K,), fractions (K,)): the fraction of frames whose maximum joint error is
    <= each threshold (default 0, 1, ..., 80 mm).  Non-decreasing in the threshold."""
    thresholds = np.arange(0.0, 81.0) if thresholds_mm is None else _np(thresholds_mm).astype(np.float64)
    worst = joint_errors(pred_mm, true_mm, mask).max(1)  # (N,)
    return thresholds, (worst[None, :] <= thresholds[:, None]).mean(1)


# ----------------------------------------------------------------------------- action
def _predictions(logits_or_pred, labels) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels (N,) and true labels (N,), argmax-ing logits (N, C) if given."""
    pred, labels = _np(logits_or_pred), _np(labels).astype(np.int64).reshape(-1)
    if pred.ndim == 2:
        pred = pred.argmax(-1)
    pred = pred.astype(np.int64).reshape(-1)
    if len(pred) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many predictions as labels, at least one; got {len(pred)} and {len(labels)}")
    return pred, labels


def accuracy(logits_or_pred, labels) -> float:
    """Fraction of correct predictions, from labels (N,) or logits (N, C)."""
    pred, labels = _predictions(logits_or_pred, labels)
    return float((pred == labels).mean())


def group_accuracy(logits, labels, groups: list[list[int]]) -> dict[str, float]:
    """How well the classes of small look-alike ``groups`` (lists of class indices) are told apart,
    over the samples whose true class is in a group: ``accuracy`` (the argmax over every class) and
    ``within_group`` (the argmax over the true class's own group only: 1 / group size is chance).
    NaN for both when no sample is in a group."""
    logits, labels = _np(logits), _np(labels).astype(np.int64).reshape(-1)
    group_of = {c: g for g in groups for c in g}
    rows = [i for i, y in enumerate(labels) if int(y) in group_of]
    if not rows:
        return {"accuracy": float("nan"), "within_group": float("nan"), "samples": 0}
    within = [group_of[int(labels[i])][int(np.argmax(logits[i, group_of[int(labels[i])]]))] == labels[i] for i in rows]
    return {"accuracy": float((logits[rows].argmax(-1) == labels[rows]).mean()), "within_group": float(np.mean(within)),
            "samples": len(rows)}


def confusion_matrix(pred, labels, num_classes: int = NUM_ACTIONS) -> np.ndarray:
    """(C, C) int64 counts: entry [i, j] is the number of samples of true class i predicted as j."""
    pred, labels = _predictions(pred, labels)
    for name, values in (("pred", pred), ("labels", labels)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}; got {values.min()}..{values.max()}")
    return np.bincount(labels * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(pred, labels, num_classes: int = NUM_ACTIONS) -> np.ndarray:
    """(C,) accuracy of each true class (recall); NaN for classes with no sample."""
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(1)  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


# ----------------------------------------------------------------------------- seeds
# Student's t 0.975 quantiles for 1..30 degrees of freedom.
_T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.068657610, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)  # Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def mean_ci95(values) -> tuple[float, float]:
    """(mean, half-width) of the 95 % t interval of the mean of per-seed ``values``.
    One value gives a NaN half-width (no spread to estimate)."""
    x = _np(values).astype(np.float64).reshape(-1)
    if len(x) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if len(x) == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(t_quantile_975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
