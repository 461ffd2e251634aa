"""torch Datasets over the crop cache (frames, sequences) and over ground-truth pose sequences.

* :class:`FrameDataset`: single frames for the hand pose estimator (DeepPrior++,
  Oberweger & Lepetit 2017): a normalised depth crop and its normalised joints.
* :class:`SequenceDataset`: whole sequences of crops and joints, for models that
  estimate pose and recognise the action together.
* :class:`PoseSequenceDataset`: ground-truth skeleton sequences for the pose-based
  action recogniser (an LSTM on 21 x 3 joints per frame, as in the original study),
  with no depth at all.

Sequences of different lengths are padded by :func:`collate_sequences`, which
also returns a (B, T) mask that is True on valid steps.  Items read from the
memory map: a frame is one contiguous (S, S) row, a sequence one contiguous
(T, S, S) slice, so assembling a batch costs microseconds per frame instead of a
PNG decode and crop (milliseconds).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import CropCache
from .fpha import FPHA, SequenceRef
from .preprocess import centre_from_joints

POSE_SCALE_MM = 100.0  # pose-sequence joints are in units of 100 mm (the original's scaling)
Centring = Literal["sequence", "frame"]


def _as_indices(cache: CropCache, sequences: list[SequenceRef | str] | None) -> np.ndarray:
    """Cache sequence indices (n,) of ``sequences`` (all of the cache's if None)."""
    if sequences is None:
        return np.arange(len(cache.keys))
    return np.array([cache.index_of(s) for s in sequences], dtype=np.int64)


def _subsample(length: int, max_len: int | None) -> np.ndarray:
    """Frame indices (T',) keeping a whole sequence: all frames, or ``max_len`` evenly spaced ones.
    Even spacing keeps the beginning and the end, whose order tells open_X from close_X."""
    if max_len is None or length <= max_len:
        return np.arange(length)
    return np.round(np.linspace(0, length - 1, max_len)).astype(np.int64)


class FrameDataset(Dataset):
    """Every frame of ``sequences`` (SequenceRefs or keys; all if None) of a crop cache.

    Item: ``depth`` (1, S, S) float32, ``joints`` (21, 3) float32 normalised by the crop
    centre and cube half-size, ``joints_mm`` (21, 3), ``centre`` (3,) mm, ``label`` int,
    ``seq`` int (the sequence's index in the cache).

    ``ds[indices]`` with a list or array (or :meth:`batch`) gathers a whole batch in one
    read, so ``DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), B, False), batch_size=None)``
    yields collated batches without per-item overhead."""

    def __init__(self, cache: CropCache, sequences: list[SequenceRef | str] | None = None):
        self.cache = cache
        self.seq_indices = _as_indices(cache, sequences)  # (n_seq,)
        starts, lengths = cache.offsets[self.seq_indices], cache.lengths[self.seq_indices]
        self.rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])  # (N,)
        self.seq_of_row = np.repeat(self.seq_indices, lengths)  # (N,)
        self.half_cube = cache.cfg.cube_mm / 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> dict:
        if np.ndim(i) == 1:  # a list or array of indices
            return self.batch(i)
        row = self.rows[i]
        seq = int(self.seq_of_row[i])
        joints_mm = torch.from_numpy(self.cache.joints[row].copy())  # (21, 3)
        centre = torch.from_numpy(self.cache.centres[row].copy())  # (3,)
        return {
            "depth": torch.from_numpy(self.cache.crops[row].astype(np.float32))[None],  # (1, S, S)
            "joints": (joints_mm - centre) / self.half_cube,  # (21, 3)
            "joints_mm": joints_mm,
            "centre": centre,
            "label": int(self.cache.labels[seq]),
            "seq": seq,
        }

    def batch(self, indices, crops: torch.Tensor | None = None) -> dict:
        """Items ``indices`` (B,) collated in one gather: the same keys with a leading B.  ``crops``:
        the cache's crops already on a GPU (:func:`resident_crops`), gathered there instead of read
        from the memory map (the same values: float16 widened to float32)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows, seqs = self.rows[idx], self.seq_of_row[idx]  # (B,)
        if crops is not None:
            depth = crops[torch.from_numpy(rows).to(crops.device, non_blocking=True)].float()  # (B, S, S)
        else:
            order = np.argsort(rows, kind="stable")  # read the memory map forwards
            depth = np.empty((len(rows),) + self.cache.crops.shape[1:], np.float32)  # (B, S, S)
            depth[order] = self.cache.crops[rows[order]]
            depth = torch.from_numpy(depth)
        joints_mm = torch.from_numpy(self.cache.joints[rows])  # (B, 21, 3)
        centre = torch.from_numpy(self.cache.centres[rows])  # (B, 3)
        return {
            "depth": depth[:, None],  # (B, 1, S, S)
            "joints": (joints_mm - centre[:, None]) / self.half_cube,
            "joints_mm": joints_mm,
            "centre": centre,
            "label": torch.from_numpy(self.cache.labels[seqs]),
            "seq": torch.from_numpy(seqs),
        }


RESIDENT_SHARE = 0.5  # the crops go to the GPU only if they take at most this share of its free memory


def resident_crops(cache: CropCache, device: torch.device | str, share: float = RESIDENT_SHARE) -> torch.Tensor | None:
    """The cache's crops (N, S, S) float16 copied to a CUDA ``device`` in slices, when they take at most
    ``share`` of its free memory (``torch.cuda.mem_get_info``: other processes' use counts); else None,
    and batches keep coming from the memory map.  The paper preset's crops are about 3.6 GB."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    crops = cache.crops
    need = crops.size * crops.dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    if need > share * free:
        return None
    out = torch.empty(crops.shape, dtype=torch.float16, device=device)
    step = max(1, (256 << 20) // max(1, crops[0].nbytes))  # about 256 MB of host memory at a time
    for start in range(0, len(crops), step):
        out[start:start + step].copy_(torch.from_numpy(np.ascontiguousarray(crops[start:start + step], np.float16)))
    return out


class SequenceDataset(Dataset):
    """Whole sequences of a crop cache.  Item: ``depth`` (T, 1, S, S) float32 (if ``with_depth``),
    ``joints`` (T, 21, 3) normalised per frame by its crop centre, ``joints_mm`` (T, 21, 3),
    ``centre`` (T, 3), ``label``, ``length`` = T, ``seq``.  Sequences longer than ``max_len``
    are subsampled evenly (see :func:`_subsample`).  Batch with :func:`collate_sequences`."""

    def __init__(self, cache: CropCache, sequences: list[SequenceRef | str] | None = None,
                 max_len: int | None = None, with_depth: bool = True):
        self.cache = cache
        self.seq_indices = _as_indices(cache, sequences)  # (n_seq,)
        self.max_len = max_len
        self.with_depth = with_depth
        self.half_cube = cache.cfg.cube_mm / 2

    def __len__(self) -> int:
        return len(self.seq_indices)

    def __getitem__(self, i: int) -> dict:
        seq = int(self.seq_indices[i])
        start, length = int(self.cache.offsets[seq]), int(self.cache.lengths[seq])
        rows = start + _subsample(length, self.max_len)  # (T,)
        joints_mm = torch.from_numpy(self.cache.joints[rows])  # (T, 21, 3)
        centre = torch.from_numpy(self.cache.centres[rows])  # (T, 3)
        item = {
            "joints": (joints_mm - centre[:, None]) / self.half_cube,
            "joints_mm": joints_mm,
            "centre": centre,
            "label": int(self.cache.labels[seq]),
            "length": len(rows),
            "seq": seq,
        }
        if self.with_depth:
            block = self.cache.crops[start:start + length]  # (T_all, S, S) one contiguous read
            crops = block[rows - start].astype(np.float32)  # (T, S, S)
            item["depth"] = torch.from_numpy(crops)[:, None]  # (T, 1, S, S)
        return item


def pose_features(joints_mm, centring: Centring = "sequence"):
    """Action-recogniser input from (..., T, 21, 3) joints in mm -> the same shape in 100 mm units.
    Works on numpy arrays (returned as float32) and on torch tensors (differentiably, for fine-tuning).

    ``"sequence"`` (default): every frame minus the *first* frame's middle MCP, so the hand's
    trajectory (pouring, toasting, flipping) survives and the transform is causal.
    ``"frame"``: each frame minus its own middle MCP: the hand's shape and orientation only.
    Apply the same function to predicted poses so that the recogniser sees one distribution."""
    if not torch.is_tensor(joints_mm):
        joints_mm = np.asarray(joints_mm, dtype=np.float32)
    if centring == "sequence":
        centre = centre_from_joints(joints_mm[..., :1, :, :])  # (..., 1, 3)
    elif centring == "frame":
        centre = centre_from_joints(joints_mm)  # (..., T, 3)
    else:
        raise ValueError(f"centring must be 'sequence' or 'frame', got {centring!r}")
    return (joints_mm - centre[..., None, :]) / POSE_SCALE_MM


class PoseSequenceDataset(Dataset):
    """Pose sequences for the action recogniser, without any depth: ground truth read from
    ``fpha`` for ``sequences`` (all if None), or any (T, 21, 3) mm arrays via :meth:`from_joints`.

    Item: ``joints`` (T, 21, 3) float32 from :func:`pose_features`, ``joints_mm``, ``label``,
    ``length``, ``seq`` (index into ``self.keys``).  Batch with :func:`collate_sequences`."""

    def __init__(self, fpha: FPHA, sequences: list[SequenceRef] | None = None, max_len: int | None = None,
                 centring: Centring = "sequence"):
        refs = list(fpha.sequences if sequences is None else sequences)
        self._setup([fpha.read_skeleton(r) for r in refs], [r.label for r in refs], [r.key for r in refs],
                    max_len, centring)

    @classmethod
    def from_joints(cls, joints_mm: list[np.ndarray], labels: list[int], keys: list[str] | None = None,
                    max_len: int | None = None, centring: Centring = "sequence") -> PoseSequenceDataset:
        """The same dataset over given (T_i, 21, 3) mm sequences, e.g. a pose estimator's predictions."""
        self = cls.__new__(cls)
        self._setup(list(joints_mm), list(labels), keys or [str(i) for i in range(len(joints_mm))], max_len, centring)
        return self

    def _setup(self, joints_mm: list[np.ndarray], labels: list[int], keys: list[str], max_len: int | None,
               centring: Centring) -> None:
        if not len(joints_mm) == len(labels) == len(keys):
            raise ValueError(f"{len(joints_mm)} sequences, {len(labels)} labels and {len(keys)} keys: counts differ")
        self.joints_mm = [np.asarray(j, dtype=np.float32)[_subsample(len(j), max_len)] for j in joints_mm]
        self.features = [pose_features(j, centring) for j in self.joints_mm]  # [(T_i, 21, 3)]
        self.labels, self.keys = labels, keys

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {
            "joints": torch.from_numpy(self.features[i]),  # (T, 21, 3)
            "joints_mm": torch.from_numpy(self.joints_mm[i]),
            "label": int(self.labels[i]),
            "length": len(self.features[i]),
            "seq": i,
        }


def collate_sequences(batch: list[dict]) -> dict:
    """Pad a list of sequence items to the longest.  Per-step tensors (T, ...) become (B, T_max, ...)
    zero-padded; ``mask`` (B, T_max) bool is True on valid steps; ``label``, ``length``, ``seq`` (B,)."""
    lengths = torch.tensor([item["length"] for item in batch], dtype=torch.long)  # (B,)
    steps = torch.arange(int(lengths.max()))
    out: dict = {"mask": steps[None, :] < lengths[:, None], "length": lengths}  # (B, T_max)
    for key in ("label", "seq"):
        out[key] = torch.tensor([item[key] for item in batch], dtype=torch.long)
    for key in batch[0]:
        if key not in out:
            out[key] = torch.nn.utils.rnn.pad_sequence([item[key] for item in batch], batch_first=True)
    return out
