"""Pre-training the two halves apart: the HPE on depth crops and the HAR on true poses.

These are the starting points of every fusion method (brief: "Both are
pre-trained apart").  Each function trains through ``handfuse.train.fit`` into
its own run folder under ``runs/<preset>/models/``, so a second call with the
same configuration loads the finished model instead of training again, and an
interrupted one resumes.

On CPU a pre-training runs on one thread wherever it runs (the run config records
``cpu_threads: 1``), as fine-tuning does: its numbers then never depend on the core
count, and :func:`pretrain_many` can run several side by side, one per worker process
(:mod:`handfuse.pool`), which gets more done on the 2-core machine than one run on both
cores.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from .cache import CropCache, get_cache
from .config import Preset
from .datasets import PoseSequenceDataset
from .fpha import FPHA
from .models.interfaces import ActionRecogniser, PoseEstimator, PosePrior
from .models.registry import DEFAULT_HAR, DEFAULT_HPE, har_entry, hpe_entry
from .paths import runs_dir
from .pool import map_jobs, one_thread, thread_record
from .tasks import HARTask, HPETask, split_train_val
from .train import FitResult, TrainConfig, finished, fit, run_digest


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


def hpe_run(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
            root: str | Path | None = None, model: str = DEFAULT_HPE) -> tuple[Path, dict, TrainConfig, object]:
    """Where :func:`pretrain_hpe` trains (run folder), with its run config, training settings and model config."""
    cfg_model = replace(hpe_entry(model).config(preset), film=film)
    cfg_train = replace(preset.train_hpe, seed=seed, device=device)
    config = _run_config(fpha, preset, **_model_parts("hpe", model, DEFAULT_HPE, cfg_model), augment=preset.augment,
                         **thread_record(device))
    name = _prefix("hpe", model, DEFAULT_HPE, film)
    return _folder(preset, root, name, config, cfg_train, seed), config, cfg_train, cfg_model


def har_run(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
            root: str | Path | None = None, model: str = DEFAULT_HAR) -> tuple[Path, dict, TrainConfig, object]:
    """Where :func:`pretrain_har` trains (run folder), with its run config, training settings and model config."""
    cfg_model = replace(har_entry(model).config(preset), attention=attention)
    cfg_train = replace(preset.train_har, seed=seed, device=device)
    config = _run_config(fpha, preset, **_model_parts("har", model, DEFAULT_HAR, cfg_model), **thread_record(device))
    name = _prefix("har", model, DEFAULT_HAR, "att" if attention else "last")
    return _folder(preset, root, name, config, cfg_train, seed), config, cfg_train, cfg_model


def _folder(preset: Preset, root: str | Path | None, name: str, config: dict, cfg_train: TrainConfig, seed: int) -> Path:
    return models_dir(preset, root) / f"{name}-{run_digest({**config, 'train': asdict(cfg_train)})}-seed{seed}"


def pretrain_hpe(fpha: FPHA, preset: Preset, film: str = "none", seed: int = 0, device: str = "cpu",
                 cache: CropCache | None = None, root: str | Path | None = None,
                 progress: bool = True, model: str = DEFAULT_HPE) -> tuple[PoseEstimator, FitResult]:
    """The pose estimator registered as ``model`` (:data:`handfuse.models.registry.HPES`; default
    DeepPrior++), plain (``film="none"``) or FiLM-conditioned and fed w_eq = 1/45.  A model with a
    pose prior fits it to the training poses first."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    run, config, cfg_train, cfg_model = hpe_run(fpha, preset, film, seed, device, root, model)
    task = HPETask(cache, splits(fpha, preset, seed), augment=preset.augment)
    torch.manual_seed(seed)
    net = hpe_entry(model).build(cfg_model)
    if isinstance(net, PosePrior):
        train_rows = task.data["train"].rows
        joints = torch.from_numpy(cache.joints[train_rows] - cache.centres[train_rows][:, None]) / task.half_cube
        net.init_pca(joints)  # the prior, from the training poses only; frozen while pre-training
    if net.channels_last_safe:  # CPU: x1.5-2.3 (config.py); H200: x1.5 in fp32, even in bf16 (benchmarks.cuda_speed)
        net.to_channels_last()
    with one_thread(device):
        result = fit(net, task, cfg_train, run, config, progress=progress)
    return net, result


def pretrain_har(fpha: FPHA, preset: Preset, attention: bool = False, seed: int = 0, device: str = "cpu",
                 root: str | Path | None = None, progress: bool = True,
                 model: str = DEFAULT_HAR) -> tuple[ActionRecogniser, FitResult]:
    """The action recogniser registered as ``model`` (:data:`handfuse.models.registry.HARS`; default
    the pose LSTM) on ground-truth pose sequences, with or without temporal attention."""
    run, config, cfg_train, cfg_model = har_run(fpha, preset, attention, seed, device, root, model)
    data = {name: PoseSequenceDataset(fpha, refs) for name, refs in splits(fpha, preset, seed).items()}
    torch.manual_seed(seed)
    net = har_entry(model).build(cfg_model)
    with one_thread(device):
        result = fit(net, HARTask(data), cfg_train, run, config, progress=progress)
    return net, result


PRETRAIN = {"hpe": (pretrain_hpe, hpe_run), "har": (pretrain_har, har_run)}


def pretrain_many(fpha: FPHA, preset: Preset, requests: list[tuple[str, dict]], device: str = "cpu",
                  cache: CropCache | None = None, progress: bool = True) -> list[tuple[nn.Module, FitResult]]:
    """Several pre-trainings: ``requests`` are ``("hpe", kwargs)`` or ``("har", kwargs)``, the kwargs
    those of :func:`pretrain_hpe` or :func:`pretrain_har` (``film``, ``attention``, ``seed``, ``model``).
    On CPU the unfinished ones run side by side, one per worker (:func:`pretrain_jobs`); then each is
    loaded here, in request order."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    cpu = torch.device(device).type == "cpu"  # on CUDA, or where a worker could not reopen the data, train here
    jobs = pretrain_jobs(fpha, preset, requests, device) if cpu and reopenable(fpha, preset, cache) else []
    map_jobs(pretrain_job, jobs, describe=describe_pretraining, desc="pre-training", progress=progress)
    return [pretrain(fpha, preset, kind, kwargs, device, cache, progress and not jobs) for kind, kwargs in requests]


def pretrain(fpha: FPHA, preset: Preset, kind: str, kwargs: dict, device: str = "cpu", cache: CropCache | None = None,
             progress: bool = True) -> tuple[nn.Module, FitResult]:
    """One request of :func:`pretrain_many` (``kind`` "hpe" or "har"), trained here or loaded."""
    if kind == "hpe":
        return pretrain_hpe(fpha, preset, device=device, cache=cache, progress=progress, **kwargs)
    return pretrain_har(fpha, preset, device=device, progress=progress, **kwargs)


def reopenable(fpha: FPHA, preset: Preset, cache: CropCache) -> bool:
    """Whether a worker process reopening ``fpha``'s root (:func:`opened`) gets the same data: the
    root opened without ``keep_going`` (a worker's FPHA would refuse it), and ``cache`` the preset's own."""
    if getattr(fpha, "missing", None):
        return False
    return cache.path.resolve() == get_cache(fpha, preset.preprocess, progress=False).path.resolve()


def pretrain_jobs(fpha: FPHA, preset: Preset, requests: list[tuple[str, dict]], device: str) -> list[dict]:
    """The worker jobs (:func:`pretrain_job`) of the requests not finished on disk, one per run
    folder.  Only for data a worker can reopen (:func:`reopenable`)."""
    jobs = {}
    for kind, kwargs in requests:
        run = PRETRAIN[kind][1](fpha, preset, device=device, **kwargs)[0]
        if not finished(run):
            jobs.setdefault(run, {"root": str(fpha.root), "intrinsics": fpha.intrinsics, "preset": preset,
                                  "device": device, "kind": kind, "kwargs": dict(kwargs), "run": str(run)})
    return list(jobs.values())


def describe_pretraining(job: dict) -> str:
    return f"pre-training {job['kind']} {job['kwargs']}"


_opened: dict = {}  # in a worker: (root, intrinsics, preset) -> (FPHA, crop cache), opened once


def opened(root: str, intrinsics, preset: Preset) -> tuple[FPHA, CropCache]:
    """The dataset and the preset's crop cache, opened once per process (a worker's)."""
    key = (root, repr(intrinsics), repr(preset))
    if key not in _opened:
        fpha = FPHA(root, intrinsics)
        _opened[key] = fpha, get_cache(fpha, preset.preprocess, progress=False)
    return _opened[key]


def pretrain_job(job: dict) -> str:
    """One pre-training in a worker process (:func:`pretrain_jobs`); returns its run folder."""
    fpha, cache = opened(job["root"], job["intrinsics"], job["preset"])
    _, result = pretrain(fpha, job["preset"], job["kind"], job["kwargs"], job["device"], cache, False)
    return result.run_dir
