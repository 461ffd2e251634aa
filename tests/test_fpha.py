"""The FPHA reader (handfuse.fpha): the tiny tree reads back exactly, and a corpus of corrupt
trees each gives exactly one DataError naming the file, the line (text files) and the problem.

Where each problem surfaces:
  split file                                  -> FPHA(root)
  skeleton.txt, frame count, misnamed frames  -> FPHA.read_skeleton(ref)
  a depth PNG                                 -> FPHA.read_depth(ref, t)
and FPHA.check() / check(decode=True) list every problem of a tree in one pass.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
import pytest

import conftest
from conftest import make_tiny_fpha
from corrupt import A, B, C, D, copy, depth, edit_bytes, edit_line, flip_idat, half, remove, set_token, skel, write_bytes, write_image
from handfuse.camera import FPHA_DEPTH
from handfuse.errors import DataError
from handfuse.fpha import FPHA, IGNORED, POSE_DIR, SPLIT_FILE, VIDEO_DIR, check_png_header
from handfuse.skeleton import ACTION_INDEX, NUM_JOINTS

# The tiny tree (conftest.TINY_SEQUENCES) and its split file, line by line:
#   1 Training 2
#   2 Subject_1/open_juice_bottle/1 0     A: 4 frames
#   3 Subject_1/close_milk/1 11           B: 3 frames
#   4 Test 2
#   5 Subject_2/open_juice_bottle/2 0     C: 5 frames
#   6 Subject_3/high_five/2 44            D: 3 frames
FRAMES = {A: 4, B: 3, C: 5, D: 3}


def ref_of(fpha: FPHA, key: str):
    return next(r for r in fpha.sequences if r.key == key)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[Path, np.ndarray]]:
    """conftest's tiny tree, built once (~1 s; copying it takes ms), and every array that
    conftest handed to the writers, by path: the ground truth for the round trip."""
    written: dict[Path, np.ndarray] = {}

    def recording(writer):
        def write(path, array, *args, **kwargs):
            written[Path(path)] = np.array(array, copy=True)
            return writer(path, array, *args, **kwargs)
        return write

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conftest, "write_skeleton_file", recording(conftest.write_skeleton_file))
        mp.setattr(conftest, "write_depth_png", recording(conftest.write_depth_png))
        root = make_tiny_fpha(tmp_path_factory.mktemp("pristine") / "fpha")
    return root, written


@pytest.fixture
def pristine(built) -> Path:
    """The valid tiny tree; not to be modified."""
    return built[0]


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the valid tiny tree that the test may corrupt."""
    return Path(shutil.copytree(pristine, tmp_path / "fpha"))


def assert_error(e: DataError, root: Path, rel: str, line: int | None, fragment: str) -> None:
    """The error names root/rel (and the line), and its message starts with 'path[:line]: '."""
    path = root / rel
    assert (e.path, e.line) == (path, line), str(e)
    assert fragment in e.problem, str(e)
    where = f"{path}:{line}" if line is not None else f"{path}"
    assert str(e) == f"{where}: {e.problem}"


# ----------------------------------------------------------------------------- round trip


def test_round_trip_is_exact(built):
    """Everything conftest wrote comes back: joints to the 4 decimals written, depth bit for bit."""
    root, written = built
    fpha = FPHA(root)

    assert len(written) == sum(FRAMES.values()) + len(FRAMES)
    for ref in fpha.sequences:
        joints = fpha.read_skeleton(ref)
        truth = written[fpha.skeleton_path(ref)]
        assert joints.dtype == np.float32 and joints.shape == (FRAMES[ref.key], NUM_JOINTS, 3)
        expected = np.vectorize(lambda v: float(f"{v:.4f}"))(truth).astype(np.float32)
        np.testing.assert_array_equal(joints, expected)
        assert fpha.num_frames(ref) == FRAMES[ref.key]
        for t in range(FRAMES[ref.key]):
            frame = fpha.read_depth(ref, t)
            assert frame.dtype == np.uint16 and frame.shape == (FPHA_DEPTH.height, FPHA_DEPTH.width)
            np.testing.assert_array_equal(frame, written[fpha.depth_path(ref, t)])
    assert fpha.check() == [] and fpha.check(decode=True) == []


def test_splits_and_labels(pristine):
    fpha = FPHA(pristine)
    assert [r.key for r in fpha.train] == [A, B]
    assert [r.key for r in fpha.test] == [C, D]
    assert [r.label for r in fpha.sequences] == [0, 11, 0, 44]
    assert all(r.label == ACTION_INDEX[r.action] for r in fpha.sequences)
    assert [(r.subject, r.action, r.rep) for r in fpha.train] == [(1, "open_juice_bottle", "1"), (1, "close_milk", "1")]
    assert fpha.split("all") == fpha.train + fpha.test
    assert fpha.split("test") == fpha.test
    assert fpha.subjects == (1, 2, 3)
    with pytest.raises(ValueError, match="split must be"):
        fpha.split("validation")


def add_sequence(root: Path, source: str, key: str, side: str | None) -> None:
    """Copy sequence ``source`` to ``key`` on disk, and list it in the split on ``side`` (if given)."""
    for folder in (VIDEO_DIR, POSE_DIR):
        shutil.copytree(root / folder / source, root / folder / key)
    if side:
        add_split_entry(root, f"{key} {ACTION_INDEX[key.split('/')[1]]}", side)


def add_split_entry(root: Path, entry: str, side: str) -> None:
    """Append an entry to a side of the split file, keeping its header count right."""
    path = root / SPLIT_FILE
    lines = path.read_text().splitlines()
    test_at = next(i for i, line in enumerate(lines) if line.startswith("Test "))
    header_at, insert_at = (0, test_at) if side == "train" else (test_at, len(lines))
    lines.insert(insert_at, entry)
    name, count = lines[header_at].split()
    lines[header_at] = f"{name} {int(count) + 1}"
    path.write_text("\n".join(lines) + "\n")


def test_pose_split_is_cross_subject(root):
    for subject in (4, 5, 6):
        add_sequence(root, A, f"Subject_{subject}/open_juice_bottle/1", "test")
    train, test = FPHA(root).pose_split()
    assert {r.subject for r in train} == {1, 3, 4}
    assert {r.subject for r in test} == {2, 5, 6}
    assert sorted(r.key for r in train + test) == sorted(r.key for r in FPHA(root).sequences)
    train, test = FPHA(root).pose_split(train_subjects=(2,))
    assert [r.key for r in train] == [C]


@pytest.mark.parametrize("on_disk", [False, True], ids=["missing-on-disk", "present-on-disk"])
def test_ignored_sequences_are_skipped(root, on_disk):
    for key in sorted(IGNORED):
        side = "test" if key.startswith("Subject_4") else "train"
        if on_disk:
            add_sequence(root, B, key, None)
            (root / skel(key)).write_text("this skeleton is broken\n")  # and would fail if read
        add_split_entry(root, f"{key} {ACTION_INDEX[key.split('/')[1]]}", side)
    assert len((root / SPLIT_FILE).read_text().splitlines()) == 6 + len(IGNORED)
    fpha = FPHA(root)
    assert [r.key for r in fpha.train] == [A, B]
    assert [r.key for r in fpha.test] == [C, D]
    assert fpha.check() == []


def test_crlf_and_trailing_blank_lines_are_accepted(root, pristine):
    for rel in (SPLIT_FILE, skel(A)):
        path = root / rel
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    fpha, clean = FPHA(root), FPHA(pristine)
    assert fpha.sequences == clean.sequences
    np.testing.assert_array_equal(fpha.read_skeleton(ref_of(fpha, A)), clean.read_skeleton(ref_of(clean, A)))


def test_projection_round_trips():
    K = FPHA_DEPTH
    rng = np.random.default_rng(1)
    xyz = np.stack([rng.uniform(-200, 200, 50), rng.uniform(-200, 200, 50), rng.uniform(200, 1200, 50)], axis=-1)
    uv = K.project(xyz)
    assert uv.shape == (50, 2)
    np.testing.assert_allclose(K.backproject(uv, xyz[:, 2]), xyz, rtol=1e-12, atol=1e-9)
    # On the optical axis: the principal point, whatever the depth.
    np.testing.assert_allclose(K.project([[0.0, 0.0, 350.0], [0.0, 0.0, 900.0]]), [[K.u0, K.v0]] * 2)
    # A point 0.2 z to the right and 0.1 z up: u = u0 + 0.2 fx, v = v0 - 0.1 fy (docs/data.md's formula).
    np.testing.assert_allclose(K.project([100.0, -50.0, 500.0]), [315.944855 + 0.2 * 475.065948, 245.287079 - 0.1 * 475.065857])
    # A depth map back to points lands on its own pixels; zeros are no measurement.
    d = np.zeros((K.height, K.width), np.uint16)
    d[20, 10], d[300, 600] = 700, 450
    points = K.depth_to_points(d)
    np.testing.assert_allclose(K.project(points), [[10, 20], [600, 300]], atol=1e-9)
    np.testing.assert_allclose(points[:, 2], [700, 450])
    rx, ry = K.rays()
    np.testing.assert_allclose([rx[20, 10], ry[20, 10]], K.backproject([10, 20], 1.0)[:2])


# ----------------------------------------------------------------------------- corruptions


class Case(NamedTuple):
    name: str
    corrupt: Callable[[Path], None]
    file: str  # relative to the root
    line: int | None  # 1-based, for text files
    fragment: str  # what the message must say


def cases(*rows: Case):
    return pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in rows])


def entry(key: str, label: int) -> str:
    return f"{key} {label}"


SPLIT_CASES = cases(
    Case("missing", remove(SPLIT_FILE), SPLIT_FILE, None, "split file not found"),
    Case("empty", write_bytes(SPLIT_FILE, b""), SPLIT_FILE, None, "missing the 'Training' section header"),
    Case("bad-train-header", edit_line(SPLIT_FILE, 1, lambda s: "Train 2"), SPLIT_FILE, 1, "expected a header 'Training <count>', found 'Train 2'"),
    Case("bad-test-header", edit_line(SPLIT_FILE, 4, lambda s: "Testing 2"), SPLIT_FILE, 4, "expected a header 'Test <count>', found 'Testing 2'"),
    Case("header-count-not-a-number", edit_line(SPLIT_FILE, 1, lambda s: "Training two"), SPLIT_FILE, 1, "expected a header 'Training <count>'"),
    Case("train-count-too-high", edit_line(SPLIT_FILE, 1, lambda s: "Training 3"), SPLIT_FILE, 1, "'Training' section announces 3 entries but only 2 follow"),
    Case("train-count-too-low", edit_line(SPLIT_FILE, 1, lambda s: "Training 1"), SPLIT_FILE, 1, "'Training' section announces 1 entries but more follow (line 3"),
    Case("test-count-too-high", edit_line(SPLIT_FILE, 4, lambda s: "Test 3"), SPLIT_FILE, 4, "'Test' section announces 3 entries but only 2 follow"),
    Case("test-count-too-low", edit_line(SPLIT_FILE, 4, lambda s: "Test 1"), SPLIT_FILE, 4, "'Test' section announces 1 entries but more follow (line 6"),
    Case("missing-sequence", edit_line(SPLIT_FILE, 6, lambda s: s.replace("/2 ", "/7 ")), SPLIT_FILE, 6, "entry 'Subject_3/high_five/7' names a missing sequence"),
    Case("missing-depth-folder", lambda root: shutil.rmtree(root / VIDEO_DIR / C), SPLIT_FILE, 5, f"{C}' names a missing sequence"),
    Case("missing-pose-folder", lambda root: shutil.rmtree(root / POSE_DIR / B), SPLIT_FILE, 3, f"{B}' names a missing sequence"),
    Case("duplicate-entry", edit_line(SPLIT_FILE, 6, lambda s: entry(A, 0)), SPLIT_FILE, 6, f"duplicate entry '{A}' (first on line 2)"),
    Case("label-45", set_token(SPLIT_FILE, 6, 2, "45"), SPLIT_FILE, 6, "label 45 is outside 0..44"),
    Case("label-negative", set_token(SPLIT_FILE, 2, 2, "-1"), SPLIT_FILE, 2, "label -1 is outside 0..44"),
    Case("label-not-integer", set_token(SPLIT_FILE, 3, 2, "eleven"), SPLIT_FILE, 3, "label 'eleven' is not an integer"),
    Case("label-disagrees", set_token(SPLIT_FILE, 3, 2, "12"), SPLIT_FILE, 3, "label 12 disagrees with action 'close_milk' (label 11)"),
    Case("unknown-action", set_token(SPLIT_FILE, 3, 1, "Subject_1/close_milkshake/1"), SPLIT_FILE, 3, "unknown action 'close_milkshake'"),
    Case("entry-without-label", set_token(SPLIT_FILE, 5, 2, ""), SPLIT_FILE, 5, "expected 'Subject_<k>/<action>/<rep> <label>'"),
    Case("entry-extra-field", set_token(SPLIT_FILE, 5, 2, "0 1"), SPLIT_FILE, 5, "expected 'Subject_<k>/<action>/<rep> <label>'"),
    Case("malformed-name", set_token(SPLIT_FILE, 2, 1, "Subject_1-open_juice_bottle-1"), SPLIT_FILE, 2, "malformed sequence name"),
    Case("subject-leading-zero", set_token(SPLIT_FILE, 2, 1, "Subject_01/open_juice_bottle/1"), SPLIT_FILE, 2, "malformed sequence name 'Subject_01/"),
    Case("garbage-after-test", edit_line(SPLIT_FILE, 6, lambda s: s + "\n\nthe end"), SPLIT_FILE, 8, "unexpected text after the 'Test' section: 'the end'"),
)


@SPLIT_CASES
def test_split_file_errors_surface_at_open(root, case):
    case.corrupt(root)
    with pytest.raises(DataError) as info:
        FPHA(root)
    assert_error(info.value, root, case.file, case.line, case.fragment)


SKEL_A = skel(A)  # 4 lines; the cases corrupt line 3 (frame 2)
SKELETON_CASES = cases(
    Case("63-columns", edit_line(SKEL_A, 3, lambda s: s.rsplit(" ", 1)[0]), SKEL_A, 3, "expected 64 numbers (frame index + 21 joints x 3), found 63"),
    Case("65-columns", edit_line(SKEL_A, 3, lambda s: s + " 1.0"), SKEL_A, 3, "expected 64 numbers (frame index + 21 joints x 3), found 65"),
    Case("blank-line-inside", edit_line(SKEL_A, 3, lambda s: ""), SKEL_A, 3, "found 0"),
    Case("non-numeric", set_token(SKEL_A, 3, 10, "12.3.4"), SKEL_A, 3, "column 10: '12.3.4' is not a number"),
    Case("nan", set_token(SKEL_A, 3, 5, "nan"), SKEL_A, 3, "column 5: 'nan' is not finite"),
    Case("inf", set_token(SKEL_A, 3, 64, "-inf"), SKEL_A, 3, "column 64: '-inf' is not finite"),
    Case("frame-index-out-of-order", set_token(SKEL_A, 3, 1, "3"), SKEL_A, 3, "frame index 3 out of order: expected 2"),
    Case("frame-index-repeated", set_token(SKEL_A, 3, 1, "1"), SKEL_A, 3, "frame index 1 out of order: expected 2"),
    Case("form-feed-keeps-line-numbers", lambda root: (edit_line(SKEL_A, 2, lambda s: s + "\f")(root), set_token(SKEL_A, 3, 64, "x")(root)), SKEL_A, 3, "column 64: 'x' is not a number"),
    Case("empty", write_bytes(SKEL_A, b""), SKEL_A, None, "empty skeleton file"),
    Case("only-blank-lines", write_bytes(SKEL_A, b"\n  \n\n"), SKEL_A, None, "empty skeleton file"),
    Case("missing", remove(SKEL_A), SKEL_A, None, "skeleton file not found"),
    Case("binary", write_bytes(SKEL_A, bytes(range(256)) * 4), SKEL_A, 1, "not an ASCII text file (byte 0 is b'\\x00')"),
    Case("non-ascii-on-line-3", edit_line(SKEL_A, 3, lambda s: s + " \u00b5m"), SKEL_A, 3, "not an ASCII text file"),
    Case("nul-bytes-on-line-2", edit_line(SKEL_A, 2, lambda s: "\0" * len(s)), SKEL_A, 2, "not an ASCII text file (byte "),
    # Frame-count disagreements name the depth file at fault.
    Case("skeleton-one-frame-short", edit_line(SKEL_A, 4, lambda s: ""), depth(A, 3), None, f"extra depth frame: {{root}}/{SKEL_A} has only 3 frames"),
    Case("missing-depth-frame", remove(depth(A, 2)), depth(A, 2), None, f"depth frame missing: {{root}}/{SKEL_A} has 4 frames but 1 of their depth files are absent"),
    Case("extra-depth-frame", copy(depth(A, 0), depth(A, 4)), depth(A, 4), None, "extra depth frame"),
    Case("misnamed-depth-frame", copy(depth(A, 0), depth(A, "depth_12.png")), depth(A, "depth_12.png"), None, "unexpected file name: depth frames are named depth_NNNN.png"),
    Case("five-digit-depth-frame", copy(depth(A, 0), depth(A, "depth_00004.png")), depth(A, "depth_00004.png"), None, "unexpected file name"),
)


@SKELETON_CASES
def test_skeleton_and_frame_errors_surface_at_read_skeleton(root, case):
    case.corrupt(root)
    fpha = FPHA(root)  # the split file is fine
    case = case._replace(fragment=case.fragment.format(root=root))
    with pytest.raises(DataError) as info:
        fpha.read_skeleton(ref_of(fpha, A))
    assert_error(info.value, root, case.file, case.line, case.fragment)
    for key in (B, C, D):  # the other sequences are untouched
        assert len(fpha.read_skeleton(ref_of(fpha, key))) == FRAMES[key]
    for decode in (False, True):  # check() finds it, and finds nothing else
        (problem,) = fpha.check(decode=decode)
        assert_error(problem, root, case.file, case.line, case.fragment)


PNG = depth(C, 1)  # frame 1 of sequence C
H, W = FPHA_DEPTH.height, FPHA_DEPTH.width
DEPTH_CASES = cases(
    Case("truncated", edit_bytes(PNG, half), PNG, None, "truncated PNG"),
    Case("one-byte-short", edit_bytes(PNG, lambda b: b[:-1]), PNG, None, "truncated PNG"),
    Case("corrupt-idat", edit_bytes(PNG, flip_idat), PNG, None, "corrupt PNG: the image data could not be decoded"),
    Case("not-a-png", write_bytes(PNG, b"depth frame goes here\n" * 40), PNG, None, "not a PNG file"),
    Case("jpeg", write_bytes(PNG, cv2.imencode(".jpg", np.zeros((H, W), np.uint8))[1].tobytes()), PNG, None, "not a PNG file"),
    Case("empty-file", write_bytes(PNG, b""), PNG, None, "not a PNG file"),
    Case("8-bit", write_image(PNG, np.full((H, W), 200, np.uint8)), PNG, None, "expected a 16-bit greyscale depth PNG, found 8-bit grey"),
    Case("rgb", write_image(PNG, np.full((H, W, 3), 200, np.uint8)), PNG, None, "expected a 16-bit greyscale depth PNG, found 8-bit RGB"),
    Case("16-bit-rgb", write_image(PNG, np.full((H, W, 3), 700, np.uint16)), PNG, None, "found 16-bit RGB"),
    Case("16-bit-wrong-size", write_image(PNG, np.full((H // 2, W // 2), 700, np.uint16)), PNG, None, f"expected {W}x{H} pixels, found {W // 2}x{H // 2}"),
    Case("16-bit-transposed", write_image(PNG, np.full((W, H), 700, np.uint16)), PNG, None, f"expected {W}x{H} pixels, found {H}x{W}"),
    Case("no-ihdr-first", edit_bytes(PNG, lambda b: b[:12] + b"tEXt" + b[16:]), PNG, None, "the first chunk is not the IHDR header"),
)
DECODE_ONLY = {"corrupt-idat"}  # problems that only a full decode can see


@DEPTH_CASES
def test_png_errors_surface_at_read_depth(root, case):
    case.corrupt(root)
    fpha = FPHA(root)
    ref = ref_of(fpha, C)
    assert len(fpha.read_skeleton(ref)) == FRAMES[C]  # the file is there; only its content is wrong
    with pytest.raises(DataError) as info:
        fpha.read_depth(ref, 1)
    assert_error(info.value, root, case.file, case.line, case.fragment)
    assert fpha.read_depth(ref, 0).shape == (H, W)  # its neighbours still read
    (problem,) = fpha.check(decode=True)
    assert_error(problem, root, case.file, case.line, case.fragment)
    if case.name in DECODE_ONLY:
        check_png_header(root / case.file)
        assert fpha.check() == []
    else:
        with pytest.raises(DataError) as info:
            check_png_header(root / case.file)
        assert_error(info.value, root, case.file, case.line, case.fragment)
        (problem,) = fpha.check()
        assert_error(problem, root, case.file, case.line, case.fragment)


def test_check_reports_every_problem_in_one_pass(root):
    """Several corruptions at once, some in the same sequence: check() lists them all."""
    corruptions = {
        # (file, line): (corrupt, message fragment)
        (depth(A, 1), None): (edit_bytes(depth(A, 1), half), "truncated PNG"),
        (depth(A, 2), None): (edit_bytes(depth(A, 2), flip_idat), "corrupt PNG"),  # decode only
        (skel(B), 2): (set_token(skel(B), 2, 7, "nan"), "'nan' is not finite"),
        (depth(B, 0), None): (write_image(depth(B, 0), np.zeros((H, W), np.uint8)), "found 8-bit grey"),
        (depth(C, 4), None): (remove(depth(C, 4)), "depth frame missing"),
        (depth(C, 1), None): (write_bytes(depth(C, 1), b"GIF89a" + bytes(100)), "not a PNG file"),
        (depth(C, "depth_12.png"), None): (copy(depth(C, 0), depth(C, "depth_12.png")), "unexpected file name"),
    }
    for corrupt, _ in corruptions.values():
        corrupt(root)
    fpha = FPHA(root)
    for decode in (False, True):
        expected = {where for where in corruptions if decode or where != (depth(A, 2), None)}
        problems = fpha.check(decode=decode)
        found = {(p.path.relative_to(root).as_posix(), p.line) for p in problems}
        assert len(problems) == len(found) == len(expected)  # each reported once
        assert found == expected
        for p in problems:
            where = (p.path.relative_to(root).as_posix(), p.line)
            assert_error(p, root, where[0], where[1], corruptions[where][1])
    assert len(fpha.read_skeleton(ref_of(fpha, D))) == FRAMES[D]  # the clean sequence still reads


# ----------------------------------------------------------------------------- message format


def test_messages_begin_with_path_and_line(root):
    """The raised errors, formatted: 'path:line: problem' for text files, 'path: problem' for PNGs."""
    set_token(SPLIT_FILE, 3, 2, "12")(root)
    with pytest.raises(DataError) as info:
        FPHA(root)
    assert str(info.value).startswith(f"{root / SPLIT_FILE}:3: label 12 disagrees")
    assert isinstance(info.value, ValueError)

    set_token(SPLIT_FILE, 3, 2, "11")(root)
    set_token(skel(D), 2, 1, "7")(root)
    write_bytes(depth(C, 0), b"junk")(root)
    fpha = FPHA(root)
    with pytest.raises(DataError) as info:
        fpha.read_skeleton(ref_of(fpha, D))
    assert str(info.value) == f"{root / skel(D)}:2: frame index 7 out of order: expected 1"
    with pytest.raises(DataError) as info:
        fpha.read_depth(ref_of(fpha, C), 0)
    assert str(info.value) == f"{root / depth(C, 0)}: not a PNG file (bad signature)"


def test_depth_pngs_are_written_unfiltered_and_read_back_exactly(tmp_path):
    import struct
    import zlib

    from handfuse.fpha import write_depth_png

    rng = np.random.default_rng(0)
    depth = rng.integers(0, 4000, (48, 64)).astype(np.uint16)
    write_depth_png(tmp_path / "d.png", depth, compression=1)
    raw = (tmp_path / "d.png").read_bytes()
    pos, idat = 8, b""
    while pos < len(raw):  # the PNG chunks: length, type, data, CRC
        (length,), kind = struct.unpack(">I", raw[pos:pos + 4]), raw[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += raw[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = zlib.decompress(idat)
    stride = 1 + 64 * 2  # a filter-type byte, then 64 16-bit pixels
    assert len(rows) == 48 * stride
    assert set(rows[::stride]) == {0}  # filter type 0 (None) on every row
    assert np.array_equal(cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED), depth)


def test_skeletons_are_parsed_once_per_root_until_they_change_on_disk(tiny_root, monkeypatch):
    import os

    import handfuse.fpha as fpha_module

    parsed = []
    real = fpha_module.read_skeleton_file
    monkeypatch.setattr(fpha_module, "read_skeleton_file", lambda path: parsed.append(path) or real(path))
    fpha = FPHA(tiny_root)
    ref = ref_of(fpha, A)
    first = fpha.read_skeleton(ref)
    first[:] = -1.0  # a caller's edit does not reach the next reader
    again = fpha.read_skeleton(ref)
    assert len(parsed) == 1 and np.array_equal(again, real(fpha.skeleton_path(ref)))
    # rewritten on disk: parsed and checked again
    path = fpha.skeleton_path(ref)
    edit_line(SKEL_A, 1, lambda s: s.replace(s.split()[1], "123.5", 1))(tiny_root)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = fpha.read_skeleton(ref)
    assert len(parsed) == 2 and changed[0, 0, 0] == np.float32(123.5)
    # a depth frame removed afterwards is found again, by name
    remove(depth(A, 2))(tiny_root)
    with pytest.raises(DataError, match="depth frame missing"):
        fpha.read_skeleton(ref)
