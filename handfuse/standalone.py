"""Pre-training the two halves apart: the HPE on depth crops and the HAR on true poses.

These are the starting points of every fusion method (brief: "Both are
pre-trained apart").  Each function trains through ``handfuse.train.fit`` into
its own run folder (:func:`handfuse.runs.run_folder`), so a second call with the
same configuration loads the finished model instead of training again, and an
interrupted one resumes.

On CPU a pre-training runs on one thread wherever it runs (the run config records
``cpu_threads: 1``), as fine-tuning does: its numbers then never depend on the core
count, and :func:`handfuse.grid.pretrain_many` can run several side by side, one per
worker process (:mod:`handfuse.pool`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import CropCache, get_cache
from .config import Preset
from .errors import DataError, check
from .datasets import PoseSequenceDataset
from .fpha import FPHA, SPLIT_FILE
from .metrics import accuracy, group_accuracy
from .models.interfaces import ActionRecogniser, PoseEstimator, PosePrior
from .models.registry import DEFAULT_HAR, DEFAULT_HPE, har_entry, hpe_entry
from .pool import one_thread
from .skeleton import ACTION_INDEX
from .synth.actions import LOOKALIKE_GROUPS
from .runs import model_parts, prefix, run_config, run_folder, thread_record
from .tasks import PRETRAIN_FEEDS, HARTask, HPETask, split_train_val
from .train import FitResult, TrainConfig, fit


def splits(fpha: FPHA, preset: Preset, seed: int) -> dict[str, list]:
    """train / val (held out from the action split's training side, per class) / test.  A DataError names
    the split file when no action has two training sequences: nothing could be held out to validate on."""
    train, val = split_train_val(fpha.train, preset.train_hpe.val_fraction, seed)
    if not val:
        raise DataError(fpha.root / SPLIT_FILE, f"no action has two training sequences ({len(fpha.train)} in all), so "
                        "none can be held out for validation: the training split needs two or more of some action")
    return {"train": train, "val": val, "test": fpha.test}


def hpe_run(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
            root: str | Path | None = None, model: str = DEFAULT_HPE,
            feed: str = "w_eq") -> tuple[Path, dict, TrainConfig, object]:
    """Where :func:`pretrain_hpe` trains (run folder), with its run config, training settings and model config."""
    check(feed in PRETRAIN_FEEDS, "feed", feed, f"what a conditioned HPE is fed while pre-training, one of {PRETRAIN_FEEDS}")
    check(feed == "w_eq" or film != "none", "feed", feed, "'w_eq' for a plain HPE (film='none'): only a "
          "FiLM-conditioned one reads an action")
    cfg_model = replace(hpe_entry(model).config(preset), film=film)
    cfg_train = replace(preset.train_hpe, seed=seed, device=device)
    fed = {} if feed == "w_eq" else {"feed": feed}  # the w_eq runs keep the folders they always had
    config = run_config(fpha, preset, **model_parts("hpe", model, DEFAULT_HPE, cfg_model), augment=preset.augment,
                        **fed, **thread_record(device))
    name = prefix("hpe", model, DEFAULT_HPE, film if feed == "w_eq" else f"{film}-{feed}")
    return run_folder(preset, name, config, cfg_train, seed, root), config, cfg_train, cfg_model


# 01's articulation reader: the pose LSTM reading the hand's joint angles (HARConfig.frame "angles"), with
# dropout 0.5 for 150 whole epochs.  On validation (python -m benchmarks.har_input, scene v2, 3 seeds) it tells
# the look-alike pairs apart from true poses at 81.2 % within-pair (seeds 62.5, 93.8, 87.5; the angles with the
# preset's training 68.8, the camera frame 56.2) and stays at chance on predicted poses (47.9 %)
ARTICULATION = {"frame": "angles", "dropout": 0.5}
ARTICULATION_EPOCHS = 150


def har_run(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
            root: str | Path | None = None, model: str = DEFAULT_HAR,
            articulation: bool = False) -> tuple[Path, dict, TrainConfig, object]:
    """Where :func:`pretrain_har` trains (run folder), with its run config, training settings and model config."""
    cfg_model = replace(har_entry(model).config(preset), attention=attention)
    cfg_train = replace(preset.train_har, seed=seed, device=device)
    variant = "att" if attention else "last"
    if articulation:
        check(model == "lstm", "articulation", articulation,
              f"False for the recogniser {model!r}: the articulation reader is the pose LSTM (har_model 'lstm')")
        cfg_model = replace(cfg_model, **ARTICULATION)
        cfg_train = replace(cfg_train, epochs=ARTICULATION_EPOCHS, patience=ARTICULATION_EPOCHS)
        variant += "-articulation"
    config = run_config(fpha, preset, **model_parts("har", model, DEFAULT_HAR, cfg_model), **thread_record(device))
    name = prefix("har", model, DEFAULT_HAR, variant)
    return run_folder(preset, name, config, cfg_train, seed, root), config, cfg_train, cfg_model


def pretrain_hpe(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
                 cache: CropCache | None = None, root: str | Path | None = None,
                 progress: bool = True, model: str = DEFAULT_HPE, feed: str = "w_eq") -> tuple[PoseEstimator, FitResult]:
    """The pose estimator registered as ``model`` (:data:`handfuse.models.registry.HPES`; default
    DeepPrior++), plain (``film="none"``) or FiLM-conditioned and fed what ``feed`` says
    (:data:`handfuse.tasks.PRETRAIN_FEEDS`: w_eq = 1/45 by default, ``"true"`` for the oracle, or a
    curriculum).  A model with a pose prior fits it to the training poses first."""
    run, config, cfg_train, cfg_model = hpe_run(fpha, preset, film, seed, device, root, model, feed)  # checks first
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    task = HPETask(cache, splits(fpha, preset, seed), augment=preset.augment, feed=feed)
    net = initial_hpe(task, cfg_model, seed, model)
    if net.channels_last_safe:  # faster on CPU and CUDA alike (docs/benchmarks.md)
        net.to_channels_last()
    with one_thread(device):
        result = fit(net, task, cfg_train, run, config, progress=progress)
    return net, result


def initial_hpe(task: HPETask, cfg_model, seed: int, model: str = DEFAULT_HPE) -> PoseEstimator:
    """The network :func:`pretrain_hpe` starts from: built from ``cfg_model`` after seeding with
    ``seed``; a model with a pose prior fits it to ``task``'s training poses (frozen while pre-training)."""
    torch.manual_seed(seed)
    net = hpe_entry(model).build(cfg_model)
    if isinstance(net, PosePrior):
        rows = task.data["train"].rows
        net.init_pca(torch.from_numpy(task.cache.joints[rows] - task.cache.centres[rows][:, None]) / task.half_cube)
    return net


def pretrain_har(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
                 root: str | Path | None = None, progress: bool = True,
                 model: str = DEFAULT_HAR, articulation: bool = False) -> tuple[ActionRecogniser, FitResult]:
    """The action recogniser registered as ``model`` (:data:`handfuse.models.registry.HARS`; default
    the pose LSTM) on ground-truth pose sequences, with or without temporal attention.
    ``articulation=True`` trains ``01``'s articulation reader instead: the pose LSTM on the hand's joint
    angles (:data:`ARTICULATION`, for :data:`ARTICULATION_EPOCHS` whole epochs), which tells the
    look-alike pairs apart from true poses."""
    run, config, cfg_train, cfg_model = har_run(fpha, preset, attention, seed, device, root, model, articulation)
    data = {name: PoseSequenceDataset(fpha, refs) for name, refs in splits(fpha, preset, seed).items()}
    torch.manual_seed(seed)
    net = har_entry(model).build(cfg_model)
    with one_thread(device):
        result = fit(net, HARTask(data), cfg_train, run, config, progress=progress)
    return net, result


def pretrain_localiser(fpha: FPHA, preset: Preset, seed: int = 0, device: str = "cpu", cache: CropCache | None = None,
                       progress: bool = True):
    """The learned refinement of the depth-only hand localiser (:func:`handfuse.localise.train_refiner`),
    trained here or loaded: (:class:`~handfuse.localise.Refiner`, FitResult).  The depth-centred test sets
    use seed 0's (:class:`handfuse.finetune.CentredTestSets`)."""
    from .localise import train_refiner

    return train_refiner(fpha, preset, seed, device, progress=progress)


def localiser_run(fpha: FPHA, preset: Preset, seed: int = 0, device: str = "cpu"):
    """Where :func:`pretrain_localiser` trains: (run folder, config, training settings, refiner config)."""
    from .localise import refiner_run

    return refiner_run(fpha, preset, seed, device)


PRETRAIN = {"hpe": (pretrain_hpe, hpe_run), "har": (pretrain_har, har_run), "localiser": (pretrain_localiser, localiser_run)}


def pretrain(fpha: FPHA, preset: Preset, kind: str, kwargs: dict, device: str = "cpu", cache: CropCache | None = None,
             progress: bool = True) -> tuple[nn.Module, FitResult]:
    """One pre-training request (``kind`` "hpe", "har" or "localiser"; ``kwargs`` those of
    :func:`pretrain_hpe`, :func:`pretrain_har` or :func:`pretrain_localiser`: ``film``, ``attention``,
    ``seed``, ``model``, ``feed``, ``articulation``), trained here or loaded."""
    if kind not in PRETRAIN:
        raise ValueError(f"pretrain: kind {kind!r} is not one of {sorted(PRETRAIN)}")
    if kind == "hpe":
        return pretrain_hpe(fpha, preset, device=device, cache=cache, progress=progress, **kwargs)
    if kind == "localiser":
        return pretrain_localiser(fpha, preset, device=device, progress=progress, **kwargs)
    return pretrain_har(fpha, preset, device=device, progress=progress, **kwargs)


def run_of(fpha: FPHA, preset: Preset, kind: str, kwargs: dict, device: str = "cpu") -> Path:
    """The run folder of one pre-training request."""
    return PRETRAIN[kind][1](fpha, preset, device=device, **kwargs)[0]


def predicted_sequences(hpe: PoseEstimator, cache: CropCache, refs: list) -> PoseSequenceDataset:
    """The pose sequences ``hpe`` predicts (fed w_eq) for the sequences ``refs`` of the crop cache,
    as a dataset a recogniser reads (labels from ``refs``)."""
    task = HPETask(cache, {"split": refs})
    frames = task.predict(hpe, "split")  # (N, 21, 3) mm, one sequence after the other
    ends = np.cumsum(cache.lengths[task.data["split"].seq_indices])
    return PoseSequenceDataset.from_joints(np.split(frames, ends[:-1]), [r.label for r in refs])


def lookalike_scores(har: ActionRecogniser, poses: PoseSequenceDataset) -> tuple[float, float]:
    """(accuracy over all 45 classes, within-pair accuracy on the look-alike pairs of
    ``handfuse.synth.actions.LOOKALIKE_GROUPS``) of one recogniser on a dataset, fractions in [0, 1]."""
    logits = np.stack(HARTask({"split": poses}).outputs(har, "split")["logits"])
    groups = [[ACTION_INDEX[a] for a in g] for g in LOOKALIKE_GROUPS]
    return accuracy(logits, poses.labels), group_accuracy(logits, poses.labels, groups)["within_group"]


def lookalike_accuracy(hars: list[ActionRecogniser], fpha: FPHA, cache: CropCache,
                       hpe: PoseEstimator | None = None) -> dict[str, list[float]]:
    """How well each recogniser of ``hars`` tells the look-alike pairs of the synthetic benchmark apart
    on the test split (:func:`lookalike_scores`): per recogniser, the within-pair accuracy (the argmax
    over the true class's pair only; chance 50 %) on true poses (``true``) and, given ``hpe``, on its
    test predictions fed w_eq (``predicted``), with the accuracy over all 45 classes beside each
    (``*_all``).  Every value is a fraction in [0, 1]."""
    sources = {"true": PoseSequenceDataset(fpha, fpha.test)}
    if hpe is not None:
        sources["predicted"] = predicted_sequences(hpe, cache, fpha.test)
    out: dict[str, list[float]] = {}
    for name, ds in sources.items():
        for har in hars:
            overall, within = lookalike_scores(har, ds)
            out.setdefault(name, []).append(within)
            out.setdefault(f"{name}_all", []).append(overall)
    return out
