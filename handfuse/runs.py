"""Run bookkeeping, shared by pre-training and fine-tuning: where a run lives, what names it,
whether it is finished, where its weights came from, and the store of its test scores.

A run folder is named by its resolved configuration, ``<prefix>-<8 hex>-seed<seed>`` under
``runs/<preset>/models/`` (:func:`run_folder`): a changed preset, option or starting point gets
a fresh folder, and a finished one (:func:`finished`) is only loaded by ``handfuse.train.fit``.
The configuration holds what the run's numbers depend on beyond its settings: the contents of
the data (:func:`data_fingerprint`: data regenerated at the same path is other data), the
library's code (:func:`code_version`), and, for a fine-tuning, the digests of the pre-trained
weights it starts from (:func:`weights_digest`).  A run whose record differs trains anew in a
folder of its own; the old folder is left alone.
Test scores of a set of weights are stored beside the runs (:class:`ScoreStore`), keyed by the
weights' :func:`fingerprint`, the method's configuration and the test frames, so a notebook that
reuses a finished run loads its scores instead of evaluating the same weights again.
"""
from __future__ import annotations

import hashlib
import subprocess
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .paths import runs_dir
from .train import RESULT, FitResult, TrainConfig, finished, load_checkpoint, recorded, run_digest, save_checkpoint

__all__ = ["ScoreStore", "code_key", "code_version", "data_fingerprint", "finished", "fingerprint", "frames_key",
           "model_parts", "models_dir", "prefix", "run_config", "run_digest", "run_folder", "same_frames",
           "thread_record", "weights_digest"]

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def code_version() -> dict:
    """The library's code: its version, a digest of every source file under ``handfuse/`` (paths and
    bytes), and the git commit of the checkout where there is one (None elsewhere)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        commit = None
    from . import __version__

    return {"version": __version__, "sources": h.hexdigest()[:16], "commit": commit}


def code_key() -> dict:
    """What of :func:`code_version` keys a run: the version and the sources' digest.  The commit is
    recorded beside it but not keyed, so a commit that changes no library source (a notebook, a
    test, the docs) reuses the runs made before it, while any change to ``handfuse/`` trains anew."""
    v = code_version()
    return {"version": v["version"], "sources": v["sources"]}


def data_fingerprint(fpha) -> str:
    """The contents of a data root, as the crop cache fingerprints them (the split file's bytes, each
    skeleton's and depth file's size and modification time; no file is decoded), computed once per
    :class:`~handfuse.fpha.FPHA` object."""
    found = getattr(fpha, "_handfuse_fingerprint", None)
    if found is None:
        from .cache import fingerprint as data_stats

        found = data_stats(fpha, list(fpha.train) + list(fpha.test))[:16]
        fpha._handfuse_fingerprint = found
    return found


def weights_digest(result: FitResult) -> str:
    """A digest of the weights a finished run selected (its ``best.pt``), or, for a run kept in memory
    only, of its result."""
    best = Path(result.run_dir) / "best.pt" if result.run_dir else None
    if best is not None and best.is_file():
        return hashlib.sha256(best.read_bytes()).hexdigest()[:16]
    return fingerprint(result)[:16]


def models_dir(preset, root: str | Path | None = None) -> Path:
    """Where a preset's runs live: ``root``, else ``runs/<preset>/models``."""
    return Path(root) if root is not None else runs_dir() / preset.name / "models"


def thread_record(device: str | torch.device) -> dict:
    """What goes into a run config beyond the run's settings: on CPU, the one thread it runs on
    (:func:`handfuse.pool.one_thread`), so that a run made on another thread count is never taken for it."""
    return {"cpu_threads": 1} if torch.device(device).type == "cpu" else {}


def run_config(fpha, preset, **parts) -> dict:
    """A pre-training's resolved configuration: the data (where and what), the code, the preset, its
    crops and ``parts`` (dataclasses become dicts)."""
    return {"data": str(fpha.root.resolve()), **identity(fpha), "preset": preset.name,
            "preprocess": asdict(preset.preprocess),
            **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in parts.items()}}


def identity(fpha) -> dict:
    """What every run config and results file records beyond its settings: the data's fingerprint and
    the code (:func:`code_key`; the commit goes to the results files, see :mod:`handfuse.results`)."""
    return {"data_fingerprint": data_fingerprint(fpha), "code": code_key()}


def model_parts(kind: str, model: str, default: str, cfg) -> dict:
    """A run config's model entries: ``{kind: cfg}``, plus ``{kind}_model`` for any model but the
    default (so that the default's run configs, and the folders of runs already made, stay as they were)."""
    return {kind: cfg} if model == default else {f"{kind}_model": model, kind: cfg}


def prefix(kind: str, model: str, default: str, variant: str) -> str:
    """``hpe-fc``, or ``hpe-resnet-fc`` for a model other than the default."""
    return f"{kind}-{variant}" if model == default else f"{kind}-{model}-{variant}"


def run_folder(preset, name: str, config: dict, train: TrainConfig, seed: int, root: str | Path | None = None) -> Path:
    """``<models_dir>/<name>-<8 hex>-seed<seed>``: one folder per resolved configuration (``config``
    and the training settings; see :func:`handfuse.train.run_digest`)."""
    return models_dir(preset, root) / f"{name}-{run_digest({**config, 'train': recorded(train)})}-seed{seed}"


def fingerprint(*runs: FitResult) -> str:
    """Where a set of weights came from: the bytes of each run's ``result.json`` (a run trained
    again writes another), or, for a run kept in memory only, the result itself."""
    h = hashlib.sha256()
    for r in runs:
        path = Path(r.run_dir) / RESULT if r.run_dir else None
        h.update(path.read_bytes() if path is not None and path.is_file() else repr(asdict(r)).encode())
    return h.hexdigest()


def frames_key(data) -> dict:
    """What a :class:`~handfuse.datasets.SequenceDataset` yields, as a comparable key: the crop
    cache, the sequences and how they are read."""
    return {"cache": str(data.cache.path.resolve()), "max_len": data.max_len, "with_depth": data.with_depth,
            "sequences": hashlib.sha256(np.ascontiguousarray(data.seq_indices, np.int64).tobytes()).hexdigest()}


def same_frames(a, b) -> bool:
    """Whether two sequence datasets yield the same items: the same sequences of the same crop cache."""
    return frames_key(a) == frames_key(b)


SCALARS = ("error_mm", "accuracy", "loss")  # the scalar scores of handfuse.methods.evaluate_sequences


class ScoreStore:
    """Test scores of one set of weights (``weights``: a fingerprint of where they came from), one
    file per method (its registered name and configuration), code version and test set in ``folder``;
    written atomically, loaded with ``weights_only=True``.  Evaluation is deterministic, so a stored
    score *is* the evaluation."""

    def __init__(self, folder: Path, weights: str, method: str = ""):
        self.folder, self.weights, self.method = Path(folder), weights, method

    def _path(self, model, data) -> Path:
        key = {"weights": self.weights, "name": self.method, "code": code_key(), "method": asdict(model.cfg),
               "frames": frames_key(data)}
        return self.folder / f"{run_digest(key)}.pt"

    def load(self, model, data) -> dict | None:
        path = self._path(model, data)
        if not path.is_file():
            return None
        s = load_checkpoint(path)
        return {**{k: float(s[k]) for k in SCALARS},
                "logits": s["logits"].numpy(), "labels": s["labels"].numpy(),
                "frame_error_mm": [e.numpy() for e in s["frame_error_mm"]],
                "attention": [None if a is None else a.numpy() for a in s["attention"]]}

    def save(self, model, data, scores: dict) -> None:
        path = self._path(model, data)
        if path.is_file():
            return
        save_checkpoint(path, {**{k: float(scores[k]) for k in SCALARS},
                               "logits": torch.from_numpy(np.asarray(scores["logits"])),
                               "labels": torch.from_numpy(np.asarray(scores["labels"])),
                               "frame_error_mm": [torch.from_numpy(np.asarray(e)) for e in scores["frame_error_mm"]],
                               "attention": [None if a is None else torch.from_numpy(np.asarray(a))
                                             for a in scores["attention"]]})
