"""Bad input (issue 8): a corpus of broken FPHA trees, each made from one valid tree by one fault.

Every variant must give ONE DataError whose message starts with the file at fault (and
``:line`` for a text file), raised where the notebooks and the CLI open the data, before
any training: ``FPHA(root)`` then ``get_cache(fpha, preset.preprocess)``.  The same fault
must be the one problem ``check_root`` (``python -m handfuse check``) reports, and that
command must report several faults of one tree in a single run.

The valid tree is conftest's tiny one (4 sequences, 15 frames, built once per module and
copied per variant); its split file, line by line::

    1 Training 2
    2 Subject_1/open_juice_bottle/1 0     A: 4 frames
    3 Subject_1/close_milk/1 11           B: 3 frames
    4 Test 2
    5 Subject_2/open_juice_bottle/2 0     C: 5 frames
    6 Subject_3/high_five/2 44            D: 3 frames
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
import pytest

from conftest import TINY_SEQUENCES, make_tiny_fpha
from corrupt import A, B, C, both, copy, depth, edit_bytes, edit_line, flip_idat, png_bytes, remove, replace_by_dangling_link, replace_by_dir, set_token, skel, write_bytes
from handfuse.__main__ import main
from handfuse.cache import get_cache, read_manifest
from handfuse.camera import FPHA_DEPTH
from handfuse.config import get_preset
from handfuse.errors import DataError
from handfuse.fpha import FPHA, POSE_DIR, SPLIT_FILE, VIDEO_DIR, check_root

H, W = FPHA_DEPTH.height, FPHA_DEPTH.width
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- corruptions (root -> None)


def root_replaced_by_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("not a folder\n")


# ----------------------------------------------------------------------------- the corpus


class Variant(NamedTuple):
    name: str
    corrupt: Callable[[Path], None]
    file: str  # relative to the root: the file the error must name ("" for the root itself)
    line: int | None  # the line it must name (text files), or None
    fragment: str  # a piece of the problem's description
    decode_only: bool = False  # only a full decode sees it (check() without --decode reads headers)
    also: tuple = ()  # further (file, line) that check reports: a fault that breaks several sequences


PNG = depth(C, 1)
SKEL = skel(A)  # 4 lines; the skeleton variants break line 3 (frame 2)
DEPTH_C = f"{VIDEO_DIR}/{C}/depth"
DEPTH_FOLDER_GONE = Variant("depth-folder-dangling-link", replace_by_dangling_link(DEPTH_C), SPLIT_FILE, 5,
                            f"names a missing sequence ({{root}}/{DEPTH_C} not found)")

VARIANTS = [
    # depth PNGs
    Variant("truncated-png", edit_bytes(PNG, lambda b: b[: len(b) // 2]), PNG, None, "truncated PNG"),
    Variant("png-missing-last-byte", edit_bytes(PNG, lambda b: b[:-1]), PNG, None, "truncated PNG"),
    Variant("zero-byte-png", write_bytes(PNG, b""), PNG, None, "not a PNG file"),
    Variant("text-file-named-png", write_bytes(PNG, b"depth goes here\n" * 20), PNG, None, "not a PNG file (bad signature)"),
    Variant("jpeg-named-png", write_bytes(PNG, cv2.imencode(".jpg", np.zeros((H, W), np.uint8))[1].tobytes()), PNG, None,
            "not a PNG file"),
    Variant("8-bit-png", write_bytes(PNG, png_bytes(np.full((H, W), 200, np.uint8))), PNG, None,
            "expected a 16-bit greyscale depth PNG, found 8-bit grey"),
    Variant("rgb-png", write_bytes(PNG, png_bytes(np.full((H, W, 3), 700, np.uint16))), PNG, None, "found 16-bit RGB"),
    Variant("png-wrong-size", write_bytes(PNG, png_bytes(np.full((H // 2, W // 2), 700, np.uint16))), PNG, None,
            f"expected {W}x{H} pixels, found {W // 2}x{H // 2}"),
    Variant("png-corrupt-image-data", edit_bytes(PNG, flip_idat), PNG, None, "corrupt PNG", decode_only=True),
    Variant("png-is-a-directory", replace_by_dir(PNG), PNG, None, "cannot read depth frame (Is a directory)"),
    Variant("png-dangling-link", replace_by_dangling_link(PNG), PNG, None, "not found (a dangling link)"),
    # frames against the skeleton
    Variant("missing-depth-frame", remove(depth(A, 2)), depth(A, 2), None, f"depth frame missing: {{root}}/{SKEL} has 4 frames"),
    Variant("extra-depth-frame", copy(depth(A, 0), depth(A, 4)), depth(A, 4), None, f"extra depth frame: {{root}}/{SKEL} has only 4"),
    Variant("skeleton-fewer-rows-than-frames", edit_line(SKEL, 4, lambda s: ""), depth(A, 3), None,
            f"extra depth frame: {{root}}/{SKEL} has only 3 frames"),
    Variant("frame-name-does-not-parse", copy(depth(A, 0), depth(A, "depth_7.png")), depth(A, "depth_7.png"), None,
            "unexpected file name: depth frames are named depth_NNNN.png"),
    Variant("empty-sequence", both(write_bytes(SKEL, b""), *(remove(depth(A, t)) for t in range(4))), SKEL, None,
            "empty skeleton file: the sequence has no frames"),
    # skeleton.txt
    Variant("skeleton-63-columns", edit_line(SKEL, 3, lambda s: s.rsplit(" ", 1)[0]), SKEL, 3, "expected 64 numbers"),
    Variant("skeleton-65-columns", edit_line(SKEL, 3, lambda s: s + " 1.0"), SKEL, 3, "expected 64 numbers (frame index + 21 joints x 3), found 65"),
    Variant("skeleton-non-numeric", set_token(SKEL, 3, 20, "12,5"), SKEL, 3, "column 20: '12,5' is not a number"),
    Variant("skeleton-nan", set_token(SKEL, 3, 7, "NaN"), SKEL, 3, "column 7: 'NaN' is not finite"),
    Variant("skeleton-inf", set_token(SKEL, 3, 64, "inf"), SKEL, 3, "column 64: 'inf' is not finite"),
    Variant("frame-index-out-of-order", set_token(SKEL, 3, 1, "3"), SKEL, 3, "frame index 3 out of order: expected 2"),
    Variant("skeleton-binary-bytes", edit_line(SKEL, 2, lambda s: "\0" * 8 + s), SKEL, 2, "not an ASCII text file"),
    Variant("skeleton-missing", remove(SKEL), SKEL, None, "skeleton file not found"),
    Variant("skeleton-is-a-directory", replace_by_dir(SKEL), SKEL, None, "cannot read skeleton file (Is a directory)"),
    # the split file
    Variant("split-missing", remove(SPLIT_FILE), SPLIT_FILE, None, "split file not found"),
    Variant("split-names-missing-sequence", set_token(SPLIT_FILE, 6, 1, "Subject_3/high_five/7"), SPLIT_FILE, 6,
            "entry 'Subject_3/high_five/7' names a missing sequence"),
    Variant("split-duplicate-entry", edit_line(SPLIT_FILE, 6, lambda s: f"{A} 0"), SPLIT_FILE, 6, f"duplicate entry '{A}' (first on line 2)"),
    Variant("split-label-45", set_token(SPLIT_FILE, 6, 2, "45"), SPLIT_FILE, 6, "label 45 is outside 0..44"),
    Variant("split-label-negative", set_token(SPLIT_FILE, 2, 2, "-1"), SPLIT_FILE, 2, "label -1 is outside 0..44"),
    Variant("split-label-disagrees", set_token(SPLIT_FILE, 3, 2, "12"), SPLIT_FILE, 3, "label 12 disagrees with action 'close_milk' (label 11)"),
    Variant("split-unknown-action", set_token(SPLIT_FILE, 3, 1, "Subject_1/close_mlik/1"), SPLIT_FILE, 3, "unknown action 'close_mlik'"),
    Variant("split-count-too-high", edit_line(SPLIT_FILE, 1, lambda s: "Training 3"), SPLIT_FILE, 1, "announces 3 entries but only 2 follow"),
    Variant("split-is-a-directory", both(remove(SPLIT_FILE), lambda root: (root / SPLIT_FILE).mkdir()), SPLIT_FILE, None,
            "split file is not a file"),
    # folders (an unreadable one: test_an_unreadable_folder_gives_one_error_naming_it)
    DEPTH_FOLDER_GONE,
    Variant("pose-folder-missing", remove(POSE_DIR), SPLIT_FILE, 2, f"names a missing sequence ({{root}}/{POSE_DIR}/{A} not found)",
            also=((SPLIT_FILE, 3), (SPLIT_FILE, 5), (SPLIT_FILE, 6))),
    Variant("root-is-a-file", root_replaced_by_file, "", None, "data root not found"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The valid tiny tree, built once (about a second); variants copy it (milliseconds)."""
    return make_tiny_fpha(tmp_path_factory.mktemp("pristine") / "fpha")


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the valid tree, to break."""
    return Path(shutil.copytree(pristine, tmp_path / "fpha"))


def open_for_training(root: Path, cache_dir: Path):
    """What the notebooks and ``python -m handfuse train`` do before training: open, then cache crops."""
    fpha = FPHA(root)
    return get_cache(fpha, get_preset("smoke").preprocess, cache_dir=cache_dir, workers=1, progress=False)


def where(root: Path, file: str, line: int | None) -> str:
    return f"{root / file}:{line}" if line is not None else f"{root / file}"


def test_the_pristine_tree_is_clean(root, tmp_path):
    """The control: without a fault, the same entry point builds a complete cache and check finds nothing."""
    cache = open_for_training(root, tmp_path / "cache")
    frames = sum(t[3] for t in TINY_SEQUENCES)
    assert len(cache) == frames and len(cache.keys) == len(TINY_SEQUENCES)
    assert check_root(root, decode=True) == ([], len(TINY_SEQUENCES), frames)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_bad_input_gives_one_error_naming_the_file(root, tmp_path, variant):
    variant.corrupt(root)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        open_for_training(root, cache_dir)
    error, at = info.value, where(root, variant.file, variant.line)
    message = str(error)
    assert message.startswith(f"{at}: "), message  # the file, and the line for a text file
    assert variant.fragment.format(root=root) in message, message
    assert (error.path, error.line) == (root / variant.file, variant.line)
    assert "\n" not in message  # one clear line, not a traceback's worth
    assert not [p for p in cache_dir.glob("crops-*") if read_manifest(p) is not None]  # nothing usable was cached

    for decode in (True, False):  # the check command finds this fault (everywhere it breaks) and nothing else
        problems, _, frames = check_root(root, decode=decode)
        if variant.decode_only and not decode:
            assert problems == []  # the header check reads no image data: --decode exists for this
            continue
        expected = [(root / file, line) for file, line in ((variant.file, variant.line),) + variant.also]
        assert [(p.path, p.line) for p in problems] == expected, problems
        assert frames == 0


# Root reads through chmod 000 by two capabilities (capabilities(7)); a process without them is held to the
# permission bits like any user.  (A switch to user nobody would not do: the interpreter may live where only
# root can reach it, as pyenv's under /root does.)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24
UNREADABLE_CHILD = r"""
import json, sys
caps = int(open("/proc/self/status").read().split("CapEff:")[1].split()[0], 16)
from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.errors import DataError
from handfuse.fpha import FPHA, check_root
root, cache_dir = sys.argv[1:]
out = {"caps": caps}
try:
    get_cache(FPHA(root), get_preset("smoke").preprocess, cache_dir=cache_dir, workers=1, progress=False)
except DataError as e:
    out["error"] = [str(e), str(e.path), e.line]
for decode in (True, False):
    problems, _, frames = check_root(root, decode=decode)
    out[f"check decode={decode}"] = [[[str(p.path), p.line] for p in problems], frames]
print(json.dumps(out))
"""


def _without_permission_override() -> None:
    """In the child, before it runs the interpreter: drop the two capabilities from the bounding set, so
    that the program it runs, even as root, never has them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def test_an_unreadable_folder_gives_one_error_naming_it(root, tmp_path):
    """A depth folder that cannot be listed (chmod 000), as in the corpus above, in a child process held
    to the permission bits: as root (these tests run as root on the project's machines), one without
    the capabilities that let root read through them."""
    folder, cache_dir = root / DEPTH_C, tmp_path / "cache"
    folder.chmod(0)
    try:
        done = subprocess.run([sys.executable, "-c", UNREADABLE_CHILD, str(root), str(cache_dir)], cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                              preexec_fn=_without_permission_override if os.geteuid() == 0 else None)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert not out["caps"] & (1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH), "the child could read through chmod 000"
    assert "error" in out, "no DataError: the folder could be listed"
    message, path, line = out["error"]
    assert message.startswith(f"{folder}: ") and "cannot list depth folder (Permission denied)" in message, message
    assert (path, line) == (str(folder), None) and "\n" not in message
    assert not [p for p in cache_dir.glob("crops-*") if read_manifest(p) is not None]  # nothing usable was cached
    for decode in (True, False):  # the check command finds this fault and nothing else
        assert out[f"check decode={decode}"] == [[[str(folder), None]], 0], out


# ----------------------------------------------------------------------------- python -m handfuse check


THREE_FAULTS = {
    # (file, line): corruption; three kinds, three files, in three sequences
    (PNG, None): edit_bytes(PNG, lambda b: b[:100]),
    (skel(B), 2): set_token(skel(B), 2, 30, "nan"),
    (SPLIT_FILE, 6): set_token(SPLIT_FILE, 6, 1, "Subject_3/high_five/9"),
}


def assert_reports(out: str, root: Path, faults) -> None:
    """``out`` has one line per fault, each starting with its file (and line)."""
    lines = out.splitlines()
    assert len(lines) == len(faults), lines
    for file, line in faults:
        assert sum(l.startswith(where(root, file, line) + ": ") for l in lines) == 1, (file, line, lines)


def test_check_command_reports_every_problem_in_one_run(root, capsys):
    for corrupt in THREE_FAULTS.values():
        corrupt(root)
    code = main(["check", str(root)])
    out, err = capsys.readouterr()
    assert code != 0
    assert_reports(out, root, THREE_FAULTS)
    assert f"{len(THREE_FAULTS)} problem(s)" in err


def test_check_command_on_a_clean_root(root, capsys):
    assert main(["check", str(root)]) == 0
    out, err = capsys.readouterr()
    frames = sum(t[3] for t in TINY_SEQUENCES)
    assert out == f"ok: {len(TINY_SEQUENCES)} sequences, {frames} frames\n"
    assert err == ""


def test_check_command_decode_flag(root, capsys):
    """Image data damaged behind an intact header: only --decode looks, and then it names the frame."""
    edit_bytes(PNG, flip_idat)(root)
    assert main(["check", str(root)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    assert main(["check", "--decode", str(root)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{root / PNG}: corrupt PNG: the image data could not be decoded"]


def test_check_command_on_a_folder_that_is_not_fpha(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) != 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / SPLIT_FILE}: split file not found")


def test_check_command_as_a_process(root):
    """The real command line, once: its exit status and output."""
    for corrupt in THREE_FAULTS.values():
        corrupt(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "handfuse", "check", str(root)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert_reports(done.stdout, root, THREE_FAULTS)


def test_a_training_split_with_nothing_to_validate_on_is_refused_naming_the_split_file(root, capsys):
    """The tiny tree trains on one sequence of each action, so none can be held out for validation: training a
    recogniser on it stops with one error naming the split file, before any epoch (it used to stop at the first
    validation, on an empty set, in words that named nothing)."""
    assert main(["train", "har", "--preset", "smoke", "--data-root", str(root), "--runs", str(root.parent / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{root / SPLIT_FILE}: no action has two training sequences (2 in all)" in err, err
    assert not (root.parent / "runs").exists() or not any((root.parent / "runs").rglob("*.pt"))
