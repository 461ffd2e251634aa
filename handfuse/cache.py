"""A memory-mapped cache of preprocessed hand crops, so that training never re-decodes a PNG.

DeepPrior++ (Oberweger & Lepetit 2017) trains on crops around the hand centre;
making them costs a PNG decode per frame (milliseconds), reading them back from
a memory map costs microseconds.  One cache holds, for a list of sequences::

    crops.npy       (N, S, S) float16  normalised depth (``handfuse.preprocess.crop``), opened mmap_mode="r"
    joints.npy      (N, 21, 3) float32  ground-truth joints, mm, camera frame
    centres.npy     (N, 3) float32      the crop centre used (``cfg.centre``: "gt" or "depth"), mm
    centres_gt.npy  (N, 3) float32      the middle MCP, mm (equal to centres in "gt" mode)
    lost.npy        (N,) bool           frames the localiser could not locate ("depth" mode; never in "gt")
    offsets.npy, lengths.npy, labels.npy   (n_seq,) int64: sequence i is rows offsets[i]:offsets[i]+lengths[i]
    manifest.json   written LAST: format version, key inputs, sequence keys, counts

The folder name is a hash of everything that changes its contents: the
:class:`~handfuse.config.PreprocessConfig`, the intrinsics, :data:`CACHE_VERSION`,
the sequences, and a stat-only fingerprint of the data root (split file bytes,
each skeleton's size/mtime, each depth folder's file names, sizes and mtimes).
So a changed parameter or file gives a new folder: the cache is rebuilt, never stale.

In ``"depth"`` mode the centres come from :func:`handfuse.localise.locate_sequence` (the
tracker, and its learned ComRefNet refinement when ``get_cache`` is given a trained refiner's
run folder); the localiser's version and the refiner's weights digest are part of the key.  A
frame the localiser could not locate is cropped around the nearest located frame's centre
(:func:`fill_lost`), so that every frame has a crop, and is marked in ``lost.npy`` and counted in
the manifest (``depth_centre_lost``): it is never passed off as located.

Builds are atomic: written into a temporary folder beside the final one, fsynced,
the manifest written last, then ``os.replace``d into place.  A folder without a
valid manifest is never used, so a killed or concurrent build cannot leave
anything that looks complete.  Processes that ask for the same cache at once (two papermill
jobs, the test suite's workers) take turns on a lock file beside it: one builds, the others
then find it built.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import cached_property, lru_cache
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from .camera import Intrinsics
from .dataconfig import PreprocessConfig
from .errors import DataError
from .fpha import FPHA, SPLIT_FILE, SequenceRef, read_depth_png
from .localise import LOCALISER_VERSION, load_refiner, locate_sequence
from .paths import exclusive
from .preprocess import centre_from_joints, crop
from .skeleton import NUM_JOINTS

CACHE_VERSION = 2  # bump when the layout or the preprocessing code changes the crops
MANIFEST = "manifest.json"
ARRAYS = ("crops", "joints", "centres", "centres_gt", "lost", "offsets", "lengths", "labels")
_TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------------------- key


def fingerprint(fpha: FPHA, sequences: list[SequenceRef]) -> str:
    """Hash of the data the cache depends on, from file stats only (no PNG is read)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256((fpha.root / SPLIT_FILE).read_bytes()).digest())
    for ref in sequences:
        h.update(f"{ref.key} {ref.label}\n".encode())
        st = _stat(fpha.skeleton_path(ref), "skeleton file")
        h.update(f"skeleton {st.st_size} {st.st_mtime_ns}\n".encode())
        for name, st in _folder_stats(fpha.depth_dir(ref)):
            h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stat(path: Path, what: str) -> os.stat_result:
    """``path.stat()``; a missing file, a dangling link or an unreadable one is a DataError naming it."""
    try:
        return path.stat()
    except FileNotFoundError:
        hint = " (a dangling link)" if path.is_symlink() else ""
        raise DataError(path, f"{what} not found{hint}") from None
    except OSError as e:
        raise DataError(path, f"cannot read {what} ({e.strerror or e})") from None


def _folder_stats(folder: Path) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of every entry of a depth folder, by name; an unlistable folder is a DataError naming it."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries)
    except OSError as e:
        raise DataError(folder, f"cannot list depth folder ({e.strerror or e})") from None
    return [(name, _stat(folder / name, "depth folder entry")) for name in names]


def cache_key_inputs(fpha: FPHA, cfg: PreprocessConfig, sequences: list[SequenceRef],
                     refiner: str | Path | None = None) -> dict:
    """Everything the cache's contents depend on, as plain JSON-able data."""
    inputs = {
        "version": CACHE_VERSION,
        "preprocess": asdict(cfg),
        "intrinsics": asdict(fpha.intrinsics),
        "sequences": [ref.key for ref in sequences],
        "data_fingerprint": fingerprint(fpha, sequences),
    }
    if cfg.centre == "depth":
        inputs["localiser"] = {"version": LOCALISER_VERSION,
                               "refiner": None if refiner is None else _weights_digest(Path(refiner))}
    return inputs


def _weights_digest(run: Path) -> str:
    """sha256 of a refiner run's ``best.pt``; a missing file is a DataError naming it."""
    path = run / "best.pt"
    if not path.is_file():
        raise DataError(path, "no trained refiner weights here (train them: python -m handfuse.localise train)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir(root: Path) -> Path:
    """``<root>/.handfuse_cache`` if the data root is writable, else ``~/.cache/handfuse``."""
    if os.access(root, os.W_OK):
        return root / ".handfuse_cache"
    return Path.home() / ".cache" / "handfuse"


# ----------------------------------------------------------------------------- the cache


class CropCache:
    """An opened, complete cache folder.  Raises ValueError if ``path`` is not one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if self.manifest is None:
            raise ValueError(f"{self.path}: not a complete crop cache (no valid {MANIFEST})")
        self.crops = np.load(self.path / "crops.npy", mmap_mode="r")  # (N, S, S) float16
        self.joints = np.load(self.path / "joints.npy")  # (N, 21, 3) float32 mm
        self.centres = np.load(self.path / "centres.npy")  # (N, 3) float32 mm
        self.centres_gt = np.load(self.path / "centres_gt.npy")  # (N, 3)
        self.lost = np.load(self.path / "lost.npy")  # (N,) bool: not located ("depth" mode)
        self.offsets = np.load(self.path / "offsets.npy")  # (n_seq,) int64
        self.lengths = np.load(self.path / "lengths.npy")  # (n_seq,)
        self.labels = np.load(self.path / "labels.npy")  # (n_seq,)
        self.keys: list[str] = self.manifest["inputs"]["sequences"]
        self.cfg = PreprocessConfig(**self.manifest["inputs"]["preprocess"])

    def __len__(self) -> int:
        return len(self.crops)

    @cached_property
    def seq_index(self) -> dict[str, int]:
        """Sequence key ``Subject_k/action/rep`` -> its index in this cache."""
        return {key: i for i, key in enumerate(self.keys)}

    def index_of(self, seq: SequenceRef | str) -> int:
        key = seq if isinstance(seq, str) else seq.key
        if key not in self.seq_index:
            raise KeyError(f"sequence {key!r} is not in the crop cache {self.path}")
        return self.seq_index[key]

    def rows(self, seq: SequenceRef | str) -> slice:
        """The contiguous rows of one sequence."""
        i = self.index_of(seq)
        return slice(int(self.offsets[i]), int(self.offsets[i] + self.lengths[i]))

    def row(self, seq: SequenceRef | str, frame: int) -> int:
        """Row of frame ``frame`` of a sequence."""
        i = self.index_of(seq)
        if not 0 <= frame < self.lengths[i]:
            raise IndexError(f"frame {frame} outside 0..{self.lengths[i] - 1} of {self.keys[i]}")
        return int(self.offsets[i] + frame)

    def __repr__(self) -> str:
        return f"CropCache({str(self.path)!r}, frames={len(self)}, sequences={len(self.keys)}, {self.cfg})"


def read_manifest(path: Path) -> dict | None:
    """The manifest of a complete cache folder, or None (missing, unreadable or incomplete)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        return None
    if not all((path / f"{name}.npy").is_file() for name in ARRAYS):
        return None
    return manifest


def get_cache(fpha: FPHA, cfg: PreprocessConfig, cache_dir: str | Path | None = None,
              workers: int | None = None, sequences: list[SequenceRef] | None = None,
              progress: bool = True, refiner: str | Path | None = None) -> CropCache:
    """The crop cache for ``fpha`` (all its sequences by default) and ``cfg``; built if missing.
    ``refiner``: in ``"depth"`` mode, a trained ComRefNet's run folder whose refinement the localiser
    applies (:func:`handfuse.localise.train_refiner`); None: the tracker alone.

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``workers`` (processes decoding PNGs)
    to min(4, cpu count); with more than one, workers start by ``forkserver``, so a *script*
    calling this needs the usual ``if __name__ == "__main__":`` guard (notebooks need nothing).
    A DataError from any frame propagates, naming the file."""
    sequences = list(fpha.sequences if sequences is None else sequences)
    if not sequences:
        raise ValueError("get_cache: no sequences to cache")
    inputs = cache_key_inputs(fpha, cfg, sequences, refiner)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(fpha.root)
    final = cache_dir / f"crops-{cfg.crop}-{cfg.centre}-{cache_key(inputs)}"
    if _built(final, inputs):
        return CropCache(final)
    with exclusive(final):  # two jobs asking at once build it once
        if not _built(final, inputs):  # the other one built it while this one waited
            build_cache(fpha, cfg, sequences, inputs, final, workers, progress, refiner)
    return CropCache(final)


def _built(final: Path, inputs: dict) -> bool:
    """Whether a complete cache of ``inputs`` is at ``final``."""
    manifest = read_manifest(final)
    return manifest is not None and manifest.get("inputs") == inputs


# ----------------------------------------------------------------------------- building


def build_cache(fpha: FPHA, cfg: PreprocessConfig, sequences: list[SequenceRef], inputs: dict,
                final: Path, workers: int | None = None, progress: bool = True,
                refiner: str | Path | None = None) -> None:
    """Build the cache atomically into ``final`` (see the module docstring)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-{socket.gethostname()}-{os.getpid()}-",
                                dir=final.parent))
    try:
        counts = _write_arrays(fpha, cfg, sequences, tmp, workers, progress, refiner)
        if fingerprint(fpha, sequences) != inputs["data_fingerprint"]:
            raise DataError(fpha.root, "the data changed while its crop cache was being built: run again")
        manifest = {"version": CACHE_VERSION, "inputs": inputs, "root": str(fpha.root.resolve()), **counts}
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already if installed


def _write_arrays(fpha: FPHA, cfg: PreprocessConfig, sequences: list[SequenceRef], out: Path,
                  workers: int | None, progress: bool, refiner: str | Path | None = None) -> dict:
    """Read skeletons, crop every frame in worker processes, write the arrays (fsynced) into ``out``."""
    joints = [fpha.read_skeleton(ref) for ref in sequences]  # [(T_i, 21, 3)], checks frame counts
    lengths = np.array([len(j) for j in joints], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n, size = int(lengths.sum()), cfg.crop
    crops = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.float16, shape=(n, size, size))
    centres = np.zeros((n, 3), np.float32)
    lost = np.zeros(n, bool)
    refiner = None if refiner is None else str(refiner)
    tasks = [([str(fpha.depth_path(ref, t)) for t in range(len(j))], j, cfg, fpha.intrinsics, refiner)
             for ref, j in zip(sequences, joints)]
    with tqdm(total=n, desc=f"caching {size}px crops", unit="frame", disable=not progress) as bar:
        for i, (seq_crops, seq_centres, seq_lost) in enumerate(_map(_crop_sequence, tasks, workers)):
            rows = slice(offsets[i], offsets[i] + lengths[i])
            crops[rows], centres[rows], lost[rows] = seq_crops, seq_centres, seq_lost
            bar.update(len(seq_crops))
    crops.flush()
    del crops
    all_joints = np.concatenate(joints) if joints else np.zeros((0, NUM_JOINTS, 3), np.float32)
    arrays = {"joints": all_joints, "centres": centres, "centres_gt": centre_from_joints(all_joints).copy(),
              "lost": lost, "offsets": offsets, "lengths": lengths,
              "labels": np.array([ref.label for ref in sequences], dtype=np.int64)}
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array)
    for name in ARRAYS:
        _fsync_file(out / f"{name}.npy")
    return {"frames": n, "num_sequences": len(sequences), "depth_centre_lost": int(lost.sum())}


def _crop_sequence(paths: list[str], joints: np.ndarray, cfg: PreprocessConfig, intrinsics: Intrinsics,
                   refiner: str | None = None):
    """Worker: crop one sequence's frames -> ((T, S, S) float16, (T, 3) float32 centres, (T,) bool lost).
    A DataError reaches the parent intact (it pickles with its path and line)."""
    depths = [read_depth_png(p, intrinsics) for p in paths]  # [(H, W) uint16]
    centres, lost = _sequence_centres(depths, joints, cfg, intrinsics, Path(paths[0]).parent, refiner)
    out = np.stack([crop(d, c, intrinsics, cfg.cube_mm, cfg.crop) for d, c in zip(depths, centres)])
    return out.astype(np.float16), centres, lost


def _sequence_centres(depths: list[np.ndarray], joints: np.ndarray, cfg: PreprocessConfig,
                      intrinsics: Intrinsics, folder: Path, refiner: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) crop centres and (T,) bool lost frames.  In "depth" mode the localiser's centres
    (:func:`handfuse.localise.locate_sequence`), a lost frame taking the nearest located frame's
    (:func:`fill_lost`), never the ground truth."""
    if cfg.centre == "gt":
        return centre_from_joints(joints).astype(np.float32), np.zeros(len(joints), bool)
    located = locate_sequence(depths, intrinsics, cfg.cube_mm, refiner=_refiner(refiner))
    lost = located.lost
    if len(lost) == len(depths):
        raise DataError(folder, f"the hand was not found in any depth frame of this sequence (centre='depth', "
                                f"{located.localiser})")
    mask = np.zeros(len(depths), bool)
    mask[lost] = True
    return fill_lost(located.centres, lost), mask


@lru_cache(maxsize=2)
def _refiner(run: str | None):
    """The trained refiner of a run folder, loaded once per process; None for None."""
    return None if run is None else load_refiner(run)


def fill_lost(centres: np.ndarray, lost: list[int]) -> np.ndarray:
    """A copy of ``centres`` (T, 3) where each ``lost`` frame takes the nearest located frame's centre
    (the earlier on a tie), so that it can still be cropped; the caller keeps ``lost`` to report
    them.  Raises ValueError when every frame is lost."""
    lost_set = set(lost)
    ok = np.array([t for t in range(len(centres)) if t not in lost_set])
    if ok.size == 0:
        raise ValueError("fill_lost: every frame is lost")
    out = np.array(centres, dtype=np.float32, copy=True)
    for t in lost_set:
        out[t] = out[ok[np.argmin(np.abs(ok - t))]]
    return out


def _map(fn, tasks: list[tuple], workers: int | None):
    """``fn(*task)`` for each task, in order, in ``workers`` processes (in-process if <= 1).
    At most ``2 * workers`` tasks are in flight, so finished crops never pile up in memory."""
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(tasks) <= 1:
        yield from (fn(*task) for task in tasks)
        return
    ctx = get_context("forkserver")  # never fork a threaded parent (torch, OpenCV pools)
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread_worker) as pool:
        try:
            yield from _bounded(pool, fn, tasks, 2 * workers)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _one_thread_worker() -> None:
    """A cache worker runs OpenCV and torch (the localiser's refinement) on one thread each: the
    workers already fill the cores."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _bounded(pool: ProcessPoolExecutor, fn, tasks: list[tuple], window: int):
    pending: deque = deque()
    todo = iter(tasks)
    for task in islice(todo, window):
        pending.append(pool.submit(fn, *task))
    while pending:
        result = pending.popleft().result()
        for task in islice(todo, 1):
            pending.append(pool.submit(fn, *task))
        yield result


# ----------------------------------------------------------------------------- atomic files


def _install(tmp: Path, final: Path) -> None:
    """Move a complete ``tmp`` folder into place.  If a complete cache is already there (a
    concurrent build won), keep it; an incomplete one (no manifest) is moved aside first."""
    if final.exists() and read_manifest(final) is None:
        aside = final.with_name(f"{_TMP_PREFIX}stale-{final.name}-{os.getpid()}")
        os.replace(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if read_manifest(final) is None:  # not a finished concurrent build: a real failure
            raise
    _fsync_dir(final.parent)


def _remove_dead_temporaries(final: Path) -> None:
    """Delete temporary folders of ``final`` left by killed builds on this host (their pid is gone)."""
    prefix = f"{_TMP_PREFIX}{final.name}-{socket.gethostname()}-"
    for tmp in final.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
