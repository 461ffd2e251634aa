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
from .models.har import PoseLSTM
from .models.hpe import HPE
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


def pretrain_hpe(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
                 cache: CropCache | None = None, root: str | Path | None = None,
                 progress: bool = True) -> tuple[HPE, FitResult]:
    """The DeepPrior++ HPE, plain (``film="none"``) or FiLM-conditioned and fed w_eq = 1/45."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    cfg_model = replace(preset.hpe, film=film)
    cfg_train = replace(preset.train_hpe, seed=seed, device=device)
    task = HPETask(cache, splits(fpha, preset, seed), augment=preset.augment)
    torch.manual_seed(seed)
    model = HPE(cfg_model)
    train_rows = task.data["train"].rows
    joints = torch.from_numpy(cache.joints[train_rows] - cache.centres[train_rows][:, None]) / task.half_cube
    model.init_pca(joints)  # the prior, from the training poses only; frozen while pre-training
    if device == "cpu" and model.channels_last_safe:
        model.to_channels_last()
    config = _run_config(fpha, preset, hpe=cfg_model, augment=preset.augment)
    run = models_dir(preset, root) / f"hpe-{film}-{run_digest({**config, 'train': asdict(cfg_train)})}-seed{seed}"
    result = fit(model, task, cfg_train, run, config, progress=progress)
    return model, result


def pretrain_har(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
                 root: str | Path | None = None, progress: bool = True) -> tuple[PoseLSTM, FitResult]:
    """The pose LSTM on ground-truth pose sequences, with or without temporal attention."""
    cfg_model = replace(preset.har, attention=attention)
    cfg_train = replace(preset.train_har, seed=seed, device=device)
    data = {name: PoseSequenceDataset(fpha, refs) for name, refs in splits(fpha, preset, seed).items()}
    torch.manual_seed(seed)
    model = PoseLSTM(cfg_model)
    config = _run_config(fpha, preset, har=cfg_model)
    run = models_dir(preset, root) / f"har-{'att' if attention else 'last'}-{run_digest({**config, 'train': asdict(cfg_train)})}-seed{seed}"
    result = fit(model, HARTask(data), cfg_train, run, config, progress=progress)
    return model, result
