"""The memory-mapped crop cache (handfuse.cache): contents, reuse, invalidation, atomicity, errors."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

import handfuse.cache as cache_mod
from conftest import make_tiny_fpha
from handfuse.cache import MANIFEST, CropCache, cache_key, cache_key_inputs, default_cache_dir, fill_lost, get_cache
from handfuse.config import PreprocessConfig
from handfuse.errors import DataError
from handfuse.fpha import FPHA, write_depth_png, write_skeleton_file
from handfuse.localise import LOCALISER_VERSION
from handfuse.preprocess import centre_from_joints, crop

CFG = PreprocessConfig(crop=24, cube_mm=250.0, centre="gt")


@pytest.fixture(scope="module")
def pristine_root(tmp_path_factory) -> Path:
    return make_tiny_fpha(tmp_path_factory.mktemp("pristine") / "fpha")


@pytest.fixture
def tiny_fpha(pristine_root, tmp_path) -> FPHA:
    """A private copy of the tiny FPHA tree that a test may change (cheaper than drawing it anew)."""
    return FPHA(shutil.copytree(pristine_root, tmp_path / "fpha"))


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """Records the folder of every cache build."""
    calls: list[Path] = []
    real = cache_mod.build_cache

    def counting(fpha, cfg, sequences, inputs, final, *args, **kwargs):
        calls.append(final)
        return real(fpha, cfg, sequences, inputs, final, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "build_cache", counting)
    return calls


def _get(fpha: FPHA, tmp_path: Path, cfg: PreprocessConfig = CFG, workers: int = 1) -> CropCache:
    return get_cache(fpha, cfg, cache_dir=tmp_path / "cache", workers=workers, progress=False)


def _corrupt_png_body(path: Path) -> None:
    """Scramble the image data but keep the signature, header and IEND: only decoding can tell."""
    data = bytearray(path.read_bytes())
    data[60:-40] = np.random.default_rng(0).integers(0, 256, len(data) - 100, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_cache_contents_match_the_preprocessing(tiny_fpha, tmp_path):
    cache = _get(tiny_fpha, tmp_path)
    n = sum(len(tiny_fpha.read_skeleton(r)) for r in tiny_fpha.sequences)
    assert cache.crops.shape == (n, 24, 24) and cache.crops.dtype == np.float16
    assert isinstance(cache.crops, np.memmap)
    assert cache.joints.shape == (n, 21, 3) and cache.centres.shape == (n, 3)
    for ref in tiny_fpha.sequences:
        joints = tiny_fpha.read_skeleton(ref)
        rows = cache.rows(ref)
        np.testing.assert_array_equal(cache.joints[rows], joints)
        np.testing.assert_array_equal(cache.centres_gt[rows], centre_from_joints(joints))
        assert cache.labels[cache.index_of(ref)] == ref.label
        t = len(joints) - 1
        expected = crop(tiny_fpha.read_depth(ref, t), joints[t, 3], tiny_fpha.intrinsics, 250.0, 24)
        np.testing.assert_allclose(cache.crops[cache.row(ref, t)], expected, atol=1e-3)
    assert cache.manifest["frames"] == n and cache.manifest["inputs"]["preprocess"] == dataclasses.asdict(CFG)


def test_cache_is_reopened_without_rebuilding(tiny_fpha, tmp_path, builds):
    first = _get(tiny_fpha, tmp_path)
    stamp = (first.path / MANIFEST).stat().st_mtime_ns
    second = _get(FPHA(tiny_fpha.root), tmp_path)
    assert len(builds) == 1
    assert second.path == first.path and (second.path / MANIFEST).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("change", [{"crop": 16}, {"cube_mm": 200.0}, {"centre": "depth"}])
def test_a_changed_parameter_rebuilds(tiny_fpha, tmp_path, builds, change):
    old = _get(tiny_fpha, tmp_path)
    new = _get(tiny_fpha, tmp_path, dataclasses.replace(CFG, **change))
    assert len(builds) == 2 and new.path != old.path
    assert new.cfg == dataclasses.replace(CFG, **change)
    if "crop" in change:
        assert new.crops.shape[1:] == (16, 16)
    else:  # a different crop of the same frames
        assert not np.allclose(new.crops, old.crops)


def test_a_changed_skeleton_file_rebuilds(tiny_fpha, tmp_path, builds):
    old = _get(tiny_fpha, tmp_path)
    ref = tiny_fpha.sequences[1]
    joints = tiny_fpha.read_skeleton(ref) + np.float32(7.0)
    write_skeleton_file(tiny_fpha.skeleton_path(ref), joints)
    new = _get(tiny_fpha, tmp_path)
    assert len(builds) == 2 and new.path != old.path
    np.testing.assert_allclose(new.joints[new.rows(ref)], joints, atol=1e-3)
    assert not np.allclose(old.joints[old.rows(ref)], joints, atol=1)


def test_a_changed_depth_frame_rebuilds(tiny_fpha, tmp_path, builds):
    old = _get(tiny_fpha, tmp_path)
    ref = tiny_fpha.sequences[0]
    path = tiny_fpha.depth_path(ref, 0)
    wall = tiny_fpha.read_skeleton(ref)[0, 3, 2] - 50  # 50 mm in front of the crop centre
    write_depth_png(path, np.full((480, 640), round(wall), np.uint16))
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size changed
    new = _get(tiny_fpha, tmp_path)
    assert len(builds) == 2
    np.testing.assert_allclose(new.crops[new.row(ref, 0)], -50 / 125, atol=0.01)
    assert np.mean(old.crops[old.row(ref, 0)] == 1) > 0.3  # the table behind the hand


def test_a_folder_without_manifest_is_not_used(tiny_fpha, tmp_path, builds):
    cache = _get(tiny_fpha, tmp_path)
    (cache.path / MANIFEST).unlink()  # as if the build was killed just before the manifest
    np.save(cache.path / "joints.npy", np.zeros((1, 21, 3), np.float32))  # and half-written
    with pytest.raises(ValueError, match="not a complete crop cache"):
        CropCache(cache.path)
    rebuilt = _get(tiny_fpha, tmp_path)
    assert len(builds) == 2 and rebuilt.path == cache.path
    assert rebuilt.joints.shape == (len(rebuilt), 21, 3)
    np.testing.assert_array_equal(rebuilt.joints[rebuilt.rows(tiny_fpha.sequences[0])],
                                  tiny_fpha.read_skeleton(tiny_fpha.sequences[0]))


def test_a_manifest_of_another_version_is_not_used(tiny_fpha, tmp_path, builds):
    cache = _get(tiny_fpha, tmp_path)
    manifest = json.loads((cache.path / MANIFEST).read_text())
    manifest["version"] = -1
    (cache.path / MANIFEST).write_text(json.dumps(manifest))
    _get(tiny_fpha, tmp_path)
    assert len(builds) == 2


def test_a_concurrent_build_keeps_the_finished_cache(tiny_fpha, tmp_path):
    cache = _get(tiny_fpha, tmp_path)
    stamp = (cache.path / MANIFEST).stat().st_mtime_ns
    sequences = tiny_fpha.sequences
    # a second builder of the same key finishing later: its os.replace meets a complete folder
    cache_mod.build_cache(tiny_fpha, CFG, sequences, cache.manifest["inputs"], cache.path, workers=1, progress=False)
    assert (cache.path / MANIFEST).stat().st_mtime_ns == stamp
    # no temporary left (the lock file that takes concurrent builders in turn stays, by design)
    assert [p.name for p in cache.path.parent.iterdir() if p.suffix != ".lock"] == [cache.path.name]


def test_temporaries_of_killed_builds_are_removed(tiny_fpha, tmp_path):
    cache = _get(tiny_fpha, tmp_path)
    prefix = f".tmp-{cache.path.name}-{socket.gethostname()}-"
    dead = _dead_pid()
    killed = cache.path.parent / f"{prefix}{dead}-abc"
    running = cache.path.parent / f"{prefix}{os.getpid()}-def"
    for folder in (killed, running):
        folder.mkdir()
        np.save(folder / "crops.npy", np.zeros(3))  # half-written, no manifest
    (cache.path / MANIFEST).unlink()
    _get(tiny_fpha, tmp_path)
    assert not killed.exists() and running.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_corrupt_png_error_crosses_the_process_pool(tiny_fpha, tmp_path):
    ref = tiny_fpha.sequences[2]
    bad = tiny_fpha.depth_path(ref, 1)
    _corrupt_png_body(bad)
    with pytest.raises(DataError) as err:
        _get(tiny_fpha, tmp_path, workers=2)
    assert err.value.path == bad and str(bad) in str(err.value)
    assert "corrupt PNG" in str(err.value)
    leftovers = [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]  # the lock file stays
    assert leftovers == []  # neither a complete-looking cache nor a temporary folder


def test_depth_centres_mark_a_lost_frame_and_crop_it_at_its_neighbour(tiny_fpha, tmp_path):
    ref = tiny_fpha.sequences[0]
    write_depth_png(tiny_fpha.depth_path(ref, 2), np.zeros((480, 640), np.uint16))  # no hand at all
    cache = _get(tiny_fpha, tmp_path, dataclasses.replace(CFG, centre="depth"))
    rows = cache.rows(ref)
    assert cache.manifest["depth_centre_lost"] == 1 == int(cache.lost.sum())
    assert cache.lost[rows][2] and not cache.lost[rows][[0, 1]].any()
    np.testing.assert_array_equal(cache.centres[rows][2], cache.centres[rows][1])  # the nearest located frame
    assert not np.allclose(cache.centres[rows], cache.centres_gt[rows])  # found from depth, not copied
    assert np.all(np.abs(cache.centres[rows][:, 2] - cache.centres_gt[rows][:, 2]) < 100)
    assert cache.manifest["inputs"]["localiser"]["version"] == LOCALISER_VERSION


def test_depth_cache_keys_on_the_refiner_weights(tiny_fpha, tmp_path):
    cfg = dataclasses.replace(CFG, centre="depth")
    run = tmp_path / "refiner"
    with pytest.raises(DataError) as err:  # no weights: one error naming the file and the command
        cache_key_inputs(tiny_fpha, cfg, tiny_fpha.sequences, run)
    assert str(run / "best.pt") in str(err.value) and "python -m handfuse.localise train" in str(err.value)
    run.mkdir()
    (run / "best.pt").write_bytes(b"one")
    one = cache_key(cache_key_inputs(tiny_fpha, cfg, tiny_fpha.sequences, run))
    (run / "best.pt").write_bytes(b"two")
    two = cache_key(cache_key_inputs(tiny_fpha, cfg, tiny_fpha.sequences, run))
    alone = cache_key(cache_key_inputs(tiny_fpha, cfg, tiny_fpha.sequences))
    assert len({one, two, alone}) == 3
    assert "localiser" not in cache_key_inputs(tiny_fpha, CFG, tiny_fpha.sequences)  # gt crops do not depend on it


def test_fill_lost_takes_the_nearest_located_frame():
    c = np.arange(15, dtype=np.float32).reshape(5, 3)
    filled = fill_lost(c, [0, 2, 3])
    np.testing.assert_array_equal(filled[[0, 2, 3]], c[[1, 1, 4]])  # 0 -> 1, 2 -> 1, 3 -> 4
    np.testing.assert_array_equal(filled[[1, 4]], c[[1, 4]])
    with pytest.raises(ValueError, match="every frame is lost"):
        fill_lost(c, range(5))


def test_default_cache_dir(tmp_path, monkeypatch):
    assert default_cache_dir(tmp_path) == tmp_path / ".handfuse_cache"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert default_cache_dir(tmp_path) == Path.home() / ".cache" / "handfuse"
