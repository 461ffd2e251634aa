"""Shared fixtures: a tiny hand-made FPHA tree (independent of the synthetic generator), and the
network guard (tests/netguard.py) installed for the whole session, in this process and in every
Python process the tests start."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from handfuse.camera import FPHA_DEPTH
from handfuse.fpha import SequenceRef, write_depth_png, write_skeleton_file, write_split_file, FPHA
from handfuse.skeleton import ACTION_INDEX, NUM_JOINTS

import netguard


def _guard_the_network() -> None:
    """The guard here, and in every Python process started from here (CLI subprocesses, torchrun and
    its workers, JupyterLab, the kernels of nbval, papermill and the browser test, pool workers):
    they inherit a PYTHONPATH whose first folder holds a ``sitecustomize`` that installs it.
    Chromium gets its own flags (``netguard.chromium_args``)."""
    netguard.install()
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != netguard.SITE]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(netguard.SITE), *path])


_guard_the_network()


def _patient_nbval(flush_s: float = 120.0) -> None:
    """nbval waits only 5 s (hard-coded) for a cell's remaining outputs once the kernel has replied.
    On a loaded 2-core machine a kernel that has just finished a long training cell can take longer
    to flush them, and nbval then fails a cell that ran fine ("Timeout of 5 seconds exceeded waiting
    for output": seen with 06_generality while other jobs ran).  Only that flush wait is raised; a
    cell's own limit stays ``--nbval-cell-timeout``.  (``make test`` collects tests/ with the
    notebooks, so this conftest is loaded for nbval too.)"""
    try:
        import nbval.plugin
    except ImportError:  # a GPU server's image without nbval can still run tests/ (tests/test_cuda.py)
        return
    init = nbval.plugin.IPyNbCell.__init__

    def patient(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.output_timeout = flush_s

    nbval.plugin.IPyNbCell.__init__ = patient


_patient_nbval()


def _own_folders_per_worker() -> None:
    """``make test`` runs the suite in pytest-xdist workers (one per core).  Each worker gets its own
    runs and figures folders below the ones ``make test`` made, so that two workers never train into
    one run folder; the data folder is shared (its benchmarks and crop caches are built under a lock,
    :func:`handfuse.paths.exclusive`)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    for name in ("HANDFUSE_RUNS", "HANDFUSE_FIGURES"):
        if os.environ.get(name):
            folder = Path(os.environ[name]) / worker
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(folder)


_own_folders_per_worker()


def pytest_collection_modifyitems(config, items):
    """The notebooks first: they are the longest unit of work (see ``pytest_xdist_make_scheduler``),
    and while one worker runs them the other works through the test modules."""
    items.sort(key=lambda item: Path(str(item.fspath)).suffix != ".ipynb")  # stable: the order within stays


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which a GPU server's image may lack
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs ``--dist loadfile``: a test module goes whole to one worker (its module fixtures
    are made once).  Here the notebooks, all of them, are one unit too, run in order in one worker: a
    notebook's cells share its kernel, and a later notebook loads the runs an earlier one trained into
    that worker's runs folder (in another worker it would train them again)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class NotebooksTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "notebooks" if path.endswith(".ipynb") else path

    return NotebooksTogether(config, log)


def random_fusion_models(seed: int, attention: bool, film: str = "both", preset: str = "smoke",
                         hpe_model: str = "deepprior", har_model: str = "lstm"):
    """Random "pre-trained" models of a preset for the fusion methods: a plain HPE, a FiLM-conditioned
    one whose FiLM layers get random weights (so that what feedback feeds really changes the pose;
    zero-initialised FiLMs would make "the fed action matters" pass by accident), and a HAR: the
    estimator and recogniser registered as ``hpe_model`` and ``har_model``."""
    from dataclasses import replace

    from handfuse.config import get_preset
    from handfuse.finetune import Pretrained
    from handfuse.models.film import FiLM
    from handfuse.models.interfaces import PosePrior
    from handfuse.models.registry import har_entry, hpe_entry

    P, make_hpe, make_har = get_preset(preset), hpe_entry(hpe_model), har_entry(har_model)
    torch.manual_seed(seed)
    poses = torch.randn(64, 21, 3) * 0.3
    hpe, hpe_film = make_hpe.build(make_hpe.config(P)), make_hpe.build(replace(make_hpe.config(P), film=film))
    for m in (hpe, hpe_film):
        if isinstance(m, PosePrior):
            m.init_pca(poses)
        m.eval()  # random running stats would otherwise be updated by the first forward
    for m in hpe_film.modules():
        if isinstance(m, FiLM):
            torch.nn.init.normal_(m.linear.weight, std=2.0)
    har = make_har.build(replace(make_har.config(P), attention=attention))
    return Pretrained(hpe, hpe_film, har, {}, hpe_model, har_model)


@pytest.fixture(scope="session")
def smoke_localiser() -> Path:
    """The smoke benchmark's localiser run (seed 0: the depth-centred test sets'), trained once per test
    process into that process's runs folder, or found there.  A test that gives itself a fresh runs folder
    and does not test the localiser's training copies it in (:func:`copy_smoke_localiser`)."""
    from handfuse.config import get_preset
    from handfuse.finetune import DEPTH_LOCALISER_SEED
    from handfuse.paths import ensure_synthetic
    from handfuse.standalone import pretrain_localiser

    fpha = FPHA(ensure_synthetic("smoke"))
    return Path(pretrain_localiser(fpha, get_preset("smoke"), seed=DEPTH_LOCALISER_SEED, progress=False)[1].run_dir)


def copy_smoke_localiser(run: Path, runs: Path) -> None:
    """A copy of the localiser ``run`` (:func:`smoke_localiser`) into the smoke models folder of ``runs``."""
    shutil.copytree(run, Path(runs) / "smoke" / "models" / run.name)


@pytest.fixture(scope="session")
def smoke_fusion_data(tmp_path_factory):
    """The smoke benchmark, its crop cache, six test sequences and their collated batch (with padding):
    (fpha, cache, sequences, batch), shared by the fusion tests."""
    from handfuse.cache import get_cache
    from handfuse.config import get_preset
    from handfuse.datasets import SequenceDataset, collate_sequences
    from handfuse.paths import ensure_synthetic

    fpha = FPHA(ensure_synthetic("smoke"))
    cache = get_cache(fpha, get_preset("smoke").preprocess, cache_dir=tmp_path_factory.mktemp("cache"), workers=1,
                      progress=False)
    seqs = SequenceDataset(cache, fpha.test[:6])
    batch = collate_sequences([seqs[i] for i in range(len(seqs))])
    assert not bool(batch["mask"].all()), "the test batch must contain padding"
    return fpha, cache, seqs, batch


# The test models are tiny: one thread is as fast as two, and it does not collapse (100x, measured)
# when another process shares the two cores, as a background run on a developer machine does.
torch.set_num_threads(1)

TINY_SEQUENCES = [
    # (subject, action, rep, frames, side)
    (1, "open_juice_bottle", "1", 4, "train"),
    (1, "close_milk", "1", 3, "train"),
    (2, "open_juice_bottle", "2", 5, "test"),
    (3, "high_five", "2", 3, "test"),
]


def splat_discs(depth: np.ndarray, points: np.ndarray, radius_mm: float) -> None:
    """Draw spheres of ``radius_mm`` at (N, 3) points into a float depth map, as discs at their
    front depth, z-buffered."""
    K = FPHA_DEPTH
    vv, uu = np.mgrid[0:K.height, 0:K.width]
    for xyz in points:
        u, v = K.project(xyz)
        r_px = K.fx * radius_mm / xyz[2]
        disc = (uu - u) ** 2 + (vv - v) ** 2 <= r_px**2
        depth[disc] = np.minimum(depth[disc], xyz[2] - radius_mm)


def make_tiny_frame(joints: np.ndarray, table_mm: float = 800.0, radius_mm: float = 9.0) -> np.ndarray:
    """A crude depth map: a flat table plus a disc of the joint's depth (minus its radius) at each joint."""
    depth = np.full((FPHA_DEPTH.height, FPHA_DEPTH.width), table_mm, dtype=np.float64)
    splat_discs(depth, joints, radius_mm)
    return np.round(depth).astype(np.uint16)


def make_tiny_fpha(root: Path, seed: int = 0) -> Path:
    """Write TINY_SEQUENCES as an FPHA-shaped tree under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for subject, action, rep, frames, side in TINY_SEQUENCES:
        ref = SequenceRef(subject, action, rep, ACTION_INDEX[action])
        (train if side == "train" else test).append(ref)
        centre = np.array([0.0, 40.0, 400.0]) + rng.normal(0, 20, 3)
        offsets = rng.normal(0, 35, (NUM_JOINTS, 3))
        joints = np.stack([centre + offsets + rng.normal(0, 2, (NUM_JOINTS, 3)) for _ in range(frames)])
        pose_dir = root / "Hand_pose_annotation_v1" / ref.key
        depth_dir = root / "Video_files" / ref.key / "depth"
        pose_dir.mkdir(parents=True)
        depth_dir.mkdir(parents=True)
        write_skeleton_file(pose_dir / "skeleton.txt", joints)
        for t in range(frames):
            write_depth_png(depth_dir / f"depth_{t:04d}.png", make_tiny_frame(joints[t]))
    write_split_file(root / "data_split_action_recognition.txt", train, test)
    return root


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A fresh, valid tiny FPHA tree that a test may corrupt."""
    return make_tiny_fpha(tmp_path / "fpha")


@pytest.fixture
def tiny_fpha(tiny_root: Path) -> FPHA:
    return FPHA(tiny_root)
