"""Pre-training the two halves apart: the HPE on depth crops and the HAR on true poses.

These are the starting points of every fusion method (brief: "Both are
pre-trained apart").  Each function trains through ``handfuse.train.fit`` into
its own run folder under ``runs/<preset>/models/``, so a second call with the
same configuration loads the finished model instead of training again, and an
interrupted one resumes.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from .cache import CropCache, get_cache
from .config import Preset
from .datasets import PoseSequenceDataset
from .fpha import FPHA
from .models.interfaces import ActionRecogniser, PoseEstimator, PosePrior
from .models.registry import DEFAULT_HAR, DEFAULT_HPE, har_entry, hpe_entry
from .paths import runs_dir
from .tasks import HARTask, HPETask, split_train_val
from .train import FitResult, fit, run_digest


def models_dir(preset: Preset, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else runs_dir() / preset.name / "models"


def splits(fpha: FPHA, preset: Preset, seed: int) -> dict[str, list]:
    """train / val (held out from the action split's training side, per class) / test."""
    train, val = split_train_val(fpha.train, preset.train_hpe.val_fraction, seed)
    return {"train": train, "val": val, "test": fpha.test}


def _run_config(fpha: FPHA, preset: Preset, **parts) -> dict:
    return {"data": str(fpha.root.resolve()), "preset": preset.name, "preprocess": asdict(preset.preprocess),
            **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in parts.items()}}


def _model_parts(kind: str, model: str, default: str, cfg) -> dict:
    """The run config's model entries: ``{kind: cfg}``, plus ``{kind}_model`` for any model but the
    default (so that the default's run configs, and the folders of runs already made, stay as they were)."""
    return {kind: cfg} if model == default else {f"{kind}_model": model, kind: cfg}


def _prefix(kind: str, model: str, default: str, variant: str) -> str:
    """``hpe-fc``, or ``hpe-resnet-fc`` for a model other than the default."""
    return f"{kind}-{variant}" if model == default else f"{kind}-{model}-{variant}"


def pretrain_hpe(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
                 cache: CropCache | None = None, root: str | Path | None = None,
                 progress: bool = True, model: str = DEFAULT_HPE) -> tuple[PoseEstimator, FitResult]:
    """The pose estimator registered as ``model`` (:data:`handfuse.models.registry.HPES`; default
    DeepPrior++), plain (``film="none"``) or FiLM-conditioned and fed w_eq = 1/45.  A model with a
    pose prior fits it to the training poses first."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    entry = hpe_entry(model)
    cfg_model = replace(entry.config(preset), film=film)
    cfg_train = replace(preset.train_hpe, seed=seed, device=device)
    task = HPETask(cache, splits(fpha, preset, seed), augment=preset.augment)
    torch.manual_seed(seed)
    net = entry.build(cfg_model)
    if isinstance(net, PosePrior):
        train_rows = task.data["train"].rows
        joints = torch.from_numpy(cache.joints[train_rows] - cache.centres[train_rows][:, None]) / task.half_cube
        net.init_pca(joints)  # the prior, from the training poses only; frozen while pre-training
    if device == "cpu" and net.channels_last_safe:
        net.to_channels_last()
    config = _run_config(fpha, preset, **_model_parts("hpe", model, DEFAULT_HPE, cfg_model), augment=preset.augment)
    name = _prefix("hpe", model, DEFAULT_HPE, film)
    run = models_dir(preset, root) / f"{name}-{run_digest({**config, 'train': asdict(cfg_train)})}-seed{seed}"
    result = fit(net, task, cfg_train, run, config, progress=progress)
    return net, result


def pretrain_har(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
                 root: str | Path | None = None, progress: bool = True,
                 model: str = DEFAULT_HAR) -> tuple[ActionRecogniser, FitResult]:
    """The action recogniser registered as ``model`` (:data:`handfuse.models.registry.HARS`; default
    the pose LSTM) on ground-truth pose sequences, with or without temporal attention."""
    entry = har_entry(model)
    cfg_model = replace(entry.config(preset), attention=attention)
    cfg_train = replace(preset.train_har, seed=seed, device=device)
    data = {name: PoseSequenceDataset(fpha, refs) for name, refs in splits(fpha, preset, seed).items()}
    torch.manual_seed(seed)
    net = entry.build(cfg_model)
    config = _run_config(fpha, preset, **_model_parts("har", model, DEFAULT_HAR, cfg_model))
    name = _prefix("har", model, DEFAULT_HAR, "att" if attention else "last")
    run = models_dir(preset, root) / f"{name}-{run_digest({**config, 'train': asdict(cfg_train)})}-seed{seed}"
    result = fit(net, HARTask(data), cfg_train, run, config, progress=progress)
    return net, result
