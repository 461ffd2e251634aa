"""torch Datasets over the crop cache and over pose sequences (handfuse.datasets)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

import handfuse.cache
import handfuse.fpha
from conftest import make_tiny_fpha
from handfuse.cache import get_cache
from handfuse.config import PreprocessConfig
from handfuse.datasets import (
    POSE_SCALE_MM,
    FrameDataset,
    PoseSequenceDataset,
    SequenceDataset,
    collate_sequences,
    pose_features,
)
from handfuse.fpha import FPHA
from handfuse.preprocess import crop

CFG = PreprocessConfig(crop=16, cube_mm=250.0, centre="gt")


@pytest.fixture(scope="module")
def fpha(tmp_path_factory) -> FPHA:
    return FPHA(make_tiny_fpha(tmp_path_factory.mktemp("data") / "fpha"))


@pytest.fixture(scope="module")
def cache(fpha, tmp_path_factory):
    return get_cache(fpha, CFG, cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)


def test_frame_items(fpha, cache):
    refs = fpha.test
    ds = FrameDataset(cache, refs)
    lengths = [len(fpha.read_skeleton(r)) for r in refs]
    assert len(ds) == sum(lengths)
    item = ds[lengths[0]]  # the second sequence's first frame
    ref = refs[1]
    assert item["depth"].shape == (1, 16, 16) and item["depth"].dtype == torch.float32
    assert item["joints"].shape == (21, 3) and item["joints"].dtype == torch.float32
    assert item["label"] == ref.label and item["seq"] == cache.index_of(ref)
    joints = fpha.read_skeleton(ref)[0]
    np.testing.assert_array_equal(item["joints_mm"].numpy(), joints)
    np.testing.assert_allclose(item["joints"].numpy(), (joints - joints[3]) / 125.0, atol=1e-6)
    expected = crop(fpha.read_depth(ref, 0), joints[3], fpha.intrinsics, 250.0, 16)
    np.testing.assert_allclose(item["depth"][0].numpy(), expected, atol=1e-3)


def test_frame_items_do_not_alias_the_cache(cache):
    ds = FrameDataset(cache)
    before = cache.joints[0].copy()
    ds[0]["joints_mm"].add_(1000)
    np.testing.assert_array_equal(cache.joints[0], before)


def test_frame_batch_equals_stacked_items(cache):
    ds = FrameDataset(cache)
    idx = np.random.default_rng(0).permutation(len(ds))[:7]
    batch = ds.batch(idx)
    items = [ds[i] for i in idx]
    for key in ("depth", "joints", "joints_mm", "centre"):
        torch.testing.assert_close(batch[key], torch.stack([it[key] for it in items]))
    assert batch["label"].tolist() == [it["label"] for it in items]
    assert batch["seq"].tolist() == [it["seq"] for it in items]


def test_dataloader_over_batch_sampler_yields_collated_batches(cache):
    ds = FrameDataset(cache)
    sampler = BatchSampler(SequentialSampler(ds), batch_size=4, drop_last=False)
    batches = list(DataLoader(ds, sampler=sampler, batch_size=None))
    assert [len(b["label"]) for b in batches] == [4] * (len(ds) // 4) + ([len(ds) % 4] if len(ds) % 4 else [])
    torch.testing.assert_close(batches[1]["depth"], ds.batch([4, 5, 6, 7])["depth"])
    assert batches[0]["depth"].shape == (4, 1, 16, 16)


@pytest.fixture
def png_decodes(monkeypatch) -> list[str]:
    """A list that records every depth-PNG decode in this process: OpenCV's decoders (``read_depth_png``,
    the one reader of the data path, calls ``cv2.imdecode``) and ``read_depth_png`` itself."""
    decoded: list[str] = []

    def counted(owner, name: str) -> None:
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: decoded.append(name) or real(*a, **k))

    counted(cv2, "imdecode")
    counted(cv2, "imread")
    for module in (handfuse.fpha, handfuse.cache):
        counted(module, "read_depth_png")
    return decoded


def test_the_decode_counter_sees_the_data_paths_decodes(fpha, png_decodes, tmp_path):
    """The control for the test below: reading a frame, and building a cache, are counted."""
    fpha.read_depth(fpha.test[0], 0)
    assert png_decodes == ["read_depth_png", "imdecode"]
    png_decodes.clear()
    get_cache(fpha, CFG, cache_dir=tmp_path, workers=1, progress=False)  # built in this process
    frames = sum(len(fpha.read_skeleton(r)) for r in fpha.sequences)
    assert png_decodes.count("imdecode") == png_decodes.count("read_depth_png") == frames


def test_cached_items_and_batches_decode_no_png(fpha, cache, png_decodes):
    """Training reads crops from the cache only: opening it again, items, batches, whole sequences
    and a DataLoader over them decode no depth PNG."""
    again = get_cache(fpha, CFG, cache_dir=cache.path.parent, workers=1, progress=False)
    assert again.path == cache.path
    frames = FrameDataset(again)
    items = [frames[i] for i in range(len(frames))]
    batch = frames.batch(np.arange(len(frames)))
    torch.testing.assert_close(batch["depth"], torch.stack([it["depth"] for it in items]))
    sampler = BatchSampler(SequentialSampler(frames), batch_size=4, drop_last=False)
    assert sum(len(b["label"]) for b in DataLoader(frames, sampler=sampler, batch_size=None)) == len(frames)
    seqs = SequenceDataset(again, fpha.sequences)
    collate_sequences([seqs[i] for i in range(len(seqs))])
    assert png_decodes == []


def test_sequence_items_and_collate(fpha, cache):
    ds = SequenceDataset(cache, fpha.sequences)
    lengths = [len(fpha.read_skeleton(r)) for r in fpha.sequences]
    item = ds[0]
    t = lengths[0]
    assert item["depth"].shape == (t, 1, 16, 16) and item["joints"].shape == (t, 21, 3)
    assert item["length"] == t
    batch = collate_sequences([ds[i] for i in range(len(ds))])
    b, t_max = len(ds), max(lengths)
    assert batch["depth"].shape == (b, t_max, 1, 16, 16) and batch["joints"].shape == (b, t_max, 21, 3)
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (b, t_max)
    assert batch["mask"].sum(1).tolist() == lengths == batch["length"].tolist()
    assert batch["label"].tolist() == [r.label for r in fpha.sequences]
    short = int(np.argmin(lengths))
    assert torch.all(batch["joints"][short, lengths[short]:] == 0)  # padding
    assert torch.all(batch["joints"][short, :lengths[short]].abs().sum((1, 2)) > 0)


def test_sequence_max_len_keeps_first_and_last_frames(fpha, cache):
    ref = max(fpha.sequences, key=lambda r: len(fpha.read_skeleton(r)))
    full = SequenceDataset(cache, [ref])[0]
    short = SequenceDataset(cache, [ref], max_len=3, with_depth=False)[0]
    assert short["length"] == 3 and "depth" not in short
    torch.testing.assert_close(short["joints"][[0, -1]], full["joints"][[0, -1]])


@pytest.mark.parametrize("centring", ["sequence", "frame"])
def test_pose_sequences(fpha, centring):
    ds = PoseSequenceDataset(fpha, fpha.train, centring=centring)
    joints = fpha.read_skeleton(fpha.train[0])  # (T, 21, 3)
    item = ds[0]
    assert item["joints"].shape == joints.shape and item["joints"].dtype == torch.float32
    mmcp = item["joints"][:, 3].numpy()  # (T, 3)
    if centring == "sequence":  # the first frame's centre: the trajectory survives
        assert np.allclose(mmcp[0], 0) and not np.allclose(mmcp[1:], 0, atol=1e-3)
        centre = joints[0, 3]
    else:
        assert np.allclose(mmcp, 0)
        centre = joints[:, 3:4]
    np.testing.assert_allclose(item["joints"].numpy() * POSE_SCALE_MM + centre, joints, atol=1e-3)
    batch = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=collate_sequences)))
    assert batch["mask"].sum(1).tolist() == [len(fpha.read_skeleton(r)) for r in fpha.train]
    assert batch["label"].tolist() == [r.label for r in fpha.train]


def test_pose_sequences_from_predictions_match_ground_truth(fpha):
    gt = PoseSequenceDataset(fpha, fpha.test, max_len=4)
    pred = PoseSequenceDataset.from_joints([fpha.read_skeleton(r) for r in fpha.test],
                                           [r.label for r in fpha.test], max_len=4)
    for i in range(len(gt)):
        torch.testing.assert_close(pred[i]["joints"], gt[i]["joints"])
        assert pred[i]["length"] == gt[i]["length"] <= 4


def test_pose_features_refuses_an_unknown_centring():
    with pytest.raises(ValueError, match="centring"):
        pose_features(np.zeros((2, 21, 3)), "wrist")
