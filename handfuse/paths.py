"""Where data, caches and figures live, and the one call that provides a dataset.

``HANDFUSE_DATA`` overrides the data folder (default: ``data/`` in the checkout,
or ``~/.cache/handfuse`` for a non-editable install).  ``HANDFUSE_FIGURES``
overrides the figures folder (default: ``figures/`` in the checkout, or the
run's ``<out>/figures``, see :func:`use_run_figures`) and
``HANDFUSE_RUNS`` the folder of trained models and of each run's outputs (default:
``runs/``; where a run's results go is :mod:`handfuse.results`); the test suite
points both at temporary folders so that smoke-preset runs never mix with real ones.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_IN_CHECKOUT = (REPO / "pyproject.toml").is_file()


def data_home() -> Path:
    env = os.environ.get("HANDFUSE_DATA")
    return Path(env) if env else (REPO / "data" if _IN_CHECKOUT else Path.home() / ".cache" / "handfuse")


_run_figures: Path | None = None  # set by a study with its own out folder or data (use_run_figures)


def figures_dir() -> Path:
    """Where figures go: ``$HANDFUSE_FIGURES`` when set; else the figures folder of the run in progress
    (:func:`use_run_figures`); else ``figures/`` in the checkout, the synthetic benchmark's figures."""
    env = os.environ.get("HANDFUSE_FIGURES")
    if env:
        path = Path(env)
    elif _run_figures is not None:
        path = _run_figures
    else:
        path = REPO / "figures" if _IN_CHECKOUT else Path.cwd() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_run_figures(folder: str | Path | None) -> None:
    """Send this process's figures to ``folder`` (None: back to the default).  A study given its own
    ``out``, or data other than the synthetic benchmark, sends them to ``<out>/figures``, so that a
    parameterised run never overwrites ``figures/`` and figures of FPHA frames never land in the checkout."""
    global _run_figures
    _run_figures = None if folder is None else Path(folder)


def runs_dir() -> Path:
    env = os.environ.get("HANDFUSE_RUNS")
    return Path(env) if env else (REPO / "runs" if _IN_CHECKOUT else Path.cwd() / "runs")


def synthetic_root(preset: str, seed: int | None = None, overrides: dict | None = None) -> Path:
    """``data/synth/<preset>-seed<seed>``, with ``-<knob><value>`` for each generator knob ``overrides`` sets."""
    from .config import get_preset  # here, not at the top: the data layer does not import the models

    cfg = get_preset(preset).synth
    tail = "".join(f"-{k}{v}" for k, v in sorted((overrides or {}).items()))
    return data_home() / "synth" / f"{preset}-seed{cfg.seed if seed is None else seed}{tail}"


def ensure_synthetic(preset: str, seed: int | None = None, workers: int | None = None,
                     overrides: dict | None = None) -> Path:
    """The synthetic benchmark of a preset (with generator knobs ``overrides``, e.g.
    ``{"action_pose_coupling": 0.5}``): generated on first use, then reused.  Knobs that all equal the
    preset's own ask for the preset's benchmark itself, not a copy under another name.  A folder whose recorded
    parameters differ from these (an older generator, say) is refused, not reused; a knob added since
    it was made counts as its default, which generates exactly what the folder holds."""
    from .config import get_preset
    from .dataconfig import SynthConfig
    from .synth import generate

    cfg = get_preset(preset).synth
    cfg = cfg if seed is None else replace(cfg, seed=seed)
    if overrides:
        from .dataconfig import from_dict

        base = cfg
        cfg = from_dict(SynthConfig, {**asdict(cfg), **overrides}, prefix="synth.")  # unknown knobs refused by name
        if cfg == base:  # knobs that all equal the preset's own ask for its benchmark: not a copy of it
            overrides = None
    root = synthetic_root(preset, cfg.seed, overrides)
    if root.exists():
        return _made_with(root, cfg)
    with exclusive(root):  # two jobs starting at once generate it once
        if root.exists():  # the other one made it while this one waited
            return _made_with(root, cfg)
        return generate(root, cfg, workers=workers)


def _made_with(root: Path, cfg) -> Path:
    """``root`` if the benchmark there was made with ``cfg`` by this generator version, else FileExistsError."""
    from .dataconfig import SynthConfig
    from .synth.generate import GENERATOR_VERSION, INFO_FILE

    info_path = root / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    made = {**asdict(SynthConfig()), **info["config"]} if isinstance(info.get("config"), dict) else None
    if made != asdict(cfg) or info.get("version") != GENERATOR_VERSION:
        raise FileExistsError(f"{root}: holds a synthetic dataset made with other parameters or generator version;"
                              " delete it to regenerate")
    return root


@contextmanager
def exclusive(target: Path):
    """Hold ``target``'s lock for the ``with`` block: an exclusive lock on the file ``.<name>.lock`` beside
    it (it and its folder made if missing; it stays).  Another process asking for the same lock waits.
    The lock goes with the process, so a killed holder never leaves it taken.  Where ``fcntl`` is
    missing (Windows) it does not lock."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(target.parent / f".{target.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
