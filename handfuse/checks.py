"""The notebooks' closing checks: each fails when nothing was learned, in every preset.

A range check (``0 < error < 300 mm``) passes a pipeline that learned nothing. These checks compare
each model with what it would score without learning, so they bite in the smoke preset that CI
runs as much as in the cpu and paper ones:

* :func:`hpe_learned`: a pre-trained pose estimator's test error lies clearly below both the
  untrained network's (:func:`untrained_hpe_error_mm`, the very network pre-training starts
  from) and the mean-pose guess's (:func:`mean_pose_error_mm`, no image read at all);
* :func:`har_learned`: an action recogniser's test accuracy on true poses lies clearly above
  chance (1/45);
* :func:`losses_fall`: a fine-tuning's losses are finite at every epoch, its training loss ends
  clearly below where it started, and its validation loss falls below its first epoch's.

Each raises an ``AssertionError`` naming the model, the numbers and the threshold.
``tests/test_checks.py`` shows that they fail when every optimiser step is a no-op, and when a
loss turns NaN (docs/reliability.md, "The notebooks' checks").
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import numpy as np

from .cache import CropCache, get_cache
from .config import Preset
from .datasets import FrameDataset
from .fpha import FPHA, SequenceRef
from .metrics import mean_joint_error
from .models.registry import DEFAULT_HPE, hpe_entry
from .pool import one_thread
from .results import write_json
from .runs import code_key, data_fingerprint, models_dir
from .skeleton import NUM_ACTIONS
from .standalone import initial_hpe, splits
from .tasks import HPETask
from .train import run_digest

HPE_MARGIN = 0.1  # a trained HPE's error must lie at least 10 % below each reference
HAR_FACTOR = 5.0  # a trained HAR's accuracy on true poses must exceed 5 x chance
LOSS_DROP = 0.05  # a fine-tuning's last training loss must lie at least 5 % below its first


# ----------------------------------------------------------------------------- references

def mean_pose_error_mm(cache: CropCache, train_refs: list[SequenceRef], test_refs: list[SequenceRef]) -> float:
    """The test error (mm) of guessing the mean training pose for every test frame: the mean of the
    training frames' joints relative to their crop centre, placed at each test frame's crop centre
    (the centre the HPE is given too).  A pose estimator that does not read its crop scores about this."""
    train, test = FrameDataset(cache, train_refs).rows, FrameDataset(cache, test_refs).rows
    mean = (cache.joints[train] - cache.centres[train][:, None]).mean(0)  # (21, 3) mm, relative to the centre
    return mean_joint_error(cache.centres[test][:, None] + mean, cache.joints[test])


def untrained_hpe_error_mm(fpha: FPHA, preset: Preset, seed: int = 0, film: str = "none", model: str = DEFAULT_HPE,
                           cache: CropCache | None = None, device: str = "cpu") -> float:
    """The test error (mm) of the network that :func:`handfuse.standalone.pretrain_hpe` starts from,
    never trained: built the same way (same seed, config and FiLM placement, and for a model with a
    pose prior the prior fitted to the training poses), evaluated as pre-training evaluates."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=False)
    task = HPETask(cache, splits(fpha, preset, seed))
    net = initial_hpe(task, replace(hpe_entry(model).config(preset), film=film), seed, model)  # pretrain_hpe's start
    with one_thread(device):
        return float(task.evaluate(net.to(device), "test", replace(preset.train_hpe, device=device))["error_mm"])


def hpe_references(fpha: FPHA, preset: Preset, seed: int = 0, film: str = "none", model: str = DEFAULT_HPE,
                   cache: CropCache | None = None) -> tuple[float, float]:
    """(untrained network's, mean-pose guess's) test errors in mm: what :func:`hpe_learned` compares
    a pre-trained estimator of ``seed`` with.  Both are deterministic, so they are kept in the preset's
    models folder (``references/``, keyed by the data, the code, the preset's settings and the
    arguments) and read back by the next notebook that checks the same models."""
    key = {"data": data_fingerprint(fpha), "code": code_key(), "preset": asdict(preset), "seed": seed, "film": film,
           "model": model}
    stored = models_dir(preset) / "references" / f"{run_digest(key)}-seed{seed}.json"  # the digest leaves seeds out
    if stored.is_file():
        found = json.loads(stored.read_text())
        if found.get("key") == json.loads(json.dumps(key)):
            return tuple(found["references_mm"])
    cache = cache or get_cache(fpha, preset.preprocess, progress=False)
    split = splits(fpha, preset, seed)
    refs = (untrained_hpe_error_mm(fpha, preset, seed, film, model, cache),
            mean_pose_error_mm(cache, split["train"], split["test"]))
    write_json(stored, {"key": key, "references_mm": refs})
    return refs


# ----------------------------------------------------------------------------- checks

def hpe_learned(result, untrained_error_mm: float, mean_pose_error_mm: float, margin: float = HPE_MARGIN,
                what: str = "the pose estimator") -> None:
    """A trained pose estimator beats both references by ``margin``: its test error (``result``: a
    FitResult, or the error in mm) is at most ``(1 - margin)`` times the untrained network's and the
    mean-pose guess's."""
    error = float(result.test["error_mm"]) if hasattr(result, "test") else float(result)
    for name, ref in (("the untrained network", untrained_error_mm), ("the mean-pose guess", mean_pose_error_mm)):
        bound = (1 - margin) * ref
        assert math.isfinite(error) and error <= bound, (
            f"{what} did not learn: test error {error:.2f} mm, not below {bound:.2f} mm "
            f"({1 - margin:.2f} x {name}'s {ref:.2f} mm)")


def har_learned(accuracy: float, classes: int = NUM_ACTIONS, factor: float = HAR_FACTOR,
                what: str = "the action recogniser") -> None:
    """A trained action recogniser is clearly above chance: its accuracy exceeds ``factor / classes``."""
    bound = factor / classes
    assert math.isfinite(accuracy) and accuracy > bound, (
        f"{what} did not learn: accuracy {100 * accuracy:.1f} %, not above {100 * bound:.1f} % "
        f"({factor:g} x chance, 1/{classes})")


def losses_fall(history: list[dict], min_drop: float = LOSS_DROP, what: str = "the fine-tuning") -> None:
    """A fine-tuning learned: its losses are finite at every epoch, its training loss at the last
    epoch lies at least ``min_drop`` (a fraction) below the first epoch's, and its validation loss,
    where the history records one, differs from the first epoch's at some later epoch.

    The two checks fail for different reasons.  With every optimiser step a no-op the validation
    loss is the same at every epoch, bit for bit (evaluation is deterministic and the weights do not
    move); the training loss, averaged over differently composed batches, may still move by a percent
    or two, hence ``min_drop``.  The validation loss need not fall: on the smoke preset's few validation
    sequences it can be lowest after the first epoch while training goes on learning (the feedback
    fine-tuning of seed 1 on a CPU without AVX-512: 0.0354246, then 0.035566, its training loss falling
    past ``min_drop``).  Needs two epochs or more: one cannot show a fall."""
    assert len(history) >= 2, f"{what}: {len(history)} epoch(s) in its history; a fall needs at least 2"
    for h in history:
        for key in ("train_loss", "val_loss"):
            if key in h:
                assert np.isfinite(h[key]), f"{what}: {key} is {h[key]} at epoch {h['epoch']}"
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    bound = (1 - min_drop) * first
    assert last <= bound, (
        f"{what} did not learn: training loss {first:.5g} at epoch {history[0]['epoch']}, {last:.5g} at epoch "
        f"{history[-1]['epoch']} (ratio {last / first:.3f}); it must fall to at most {bound:.5g} ({1 - min_drop:.2f} x)")
    val = [h["val_loss"] for h in history if "val_loss" in h]
    if len(val) == len(history):
        assert any(v != val[0] for v in val[1:]), (
            f"{what} did not learn: validation loss {val[0]!r} at the first epoch and the same at every later one"
            " (the weights never moved)")


# ----------------------------------------------------------------------------- over a notebook's run records

def pretrained_learned(records, fpha: FPHA, preset: Preset, cache: CropCache | None = None) -> None:
    """:func:`hpe_learned` and :func:`har_learned` for the pre-trained models that run records
    (:class:`handfuse.records.RunRecord`) started from, once per seed and model."""
    refs, done = {}, set()
    for r in records:
        film, attention = r.config["film"], r.config["attention"]
        key = (r.seed, r.hpe_model, r.har_model, film, attention)
        if key in done:
            continue
        done.add(key)
        if (r.seed, r.hpe_model, film) not in refs:
            refs[r.seed, r.hpe_model, film] = hpe_references(fpha, preset, r.seed, film, r.hpe_model, cache)
        hpe_learned(r.pretrained.hpe_error_mm, *refs[r.seed, r.hpe_model, film],
                    what=f"the pre-trained {r.hpe_model} HPE (FiLM {film}) of seed {r.seed}")
        har_learned(r.pretrained.har_accuracy,
                    what=f"the pre-trained {r.har_model} HAR{' with attention' if attention else ''} of seed {r.seed}")


def finetunings_learned(records) -> None:
    """:func:`losses_fall` for every fine-tuned run record (the untrained ones have no history)."""
    for r in records:
        if r.trained:
            losses_fall(r.history, what=f"the {r.method} fine-tuning of seed {r.seed} ({r.hpe_model} + {r.har_model})")
