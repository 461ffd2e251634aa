"""Reader for the First-Person Hand Action benchmark's on-disk format.

One reader serves the real dataset and the synthetic benchmark, which writes the
same tree (see ``handfuse.synth``)::

    ROOT/data_split_action_recognition.txt
    ROOT/Video_files/Subject_<k>/<action>/<rep>/depth/depth_<NNNN>.png   640x480 uint16, mm
    ROOT/Hand_pose_annotation_v1/Subject_<k>/<action>/<rep>/skeleton.txt   t x1 y1 z1 ... x21 y21 z21
    ROOT/Subjects_info/Subject_<k>_info.txt

Every malformed input raises one :class:`~handfuse.errors.DataError` whose
message starts with the file (and the line, for text files).  Nothing is skipped
silently: the only sequences left out are the three that FPHA's authors ask
users to ignore.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from .camera import FPHA_DEPTH
from .errors import DataError
from .skeleton import ACTION_INDEX, NUM_ACTIONS, NUM_JOINTS

SPLIT_FILE = "data_split_action_recognition.txt"
VIDEO_DIR = "Video_files"
POSE_DIR = "Hand_pose_annotation_v1"
INFO_DIR = "Subjects_info"
IGNORED = frozenset({"Subject_2/close_milk/4", "Subject_2/put_tea_bag/2", "Subject_4/flip_sponge/2"})
POSE_TRAIN_SUBJECTS = (1, 3, 4)  # FPHA's cross-subject hand pose protocol
SPLIT_HEADERS = ("Training", "Test")
DEPTH_NAME = re.compile(r"depth_(\d{4})\.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
_KEY = re.compile(r"Subject_([1-9][0-9]*)/([A-Za-z_]+)/([^/\s]+)")  # no leading zeros: one name per sequence
_LABEL = re.compile(r"-?[0-9]+")  # int() alone would also take "1_1" or "+1"
_NOT_TEXT = re.compile(rb"[^\t\n\v\f\r\x20-\x7e]")  # NUL, other control bytes, non-ASCII


@dataclass(frozen=True, order=True)
class SequenceRef:
    """One recorded sequence: ``Subject_<subject>/<action>/<rep>`` with its action label."""

    subject: int
    action: str
    rep: str
    label: int

    @property
    def key(self) -> str:
        return f"Subject_{self.subject}/{self.action}/{self.rep}"


# ----------------------------------------------------------------------------- files


def read_depth_png(path: str | Path, intrinsics=FPHA_DEPTH) -> np.ndarray:
    """Decode one depth frame: (H, W) uint16 millimetres.  Refuses anything that is not a
    complete 16-bit single-channel PNG of the camera's size."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read depth frame ({e.strerror or e})") from None
    _check_png(path, data[:26], len(data), data[-8:], intrinsics)
    height, width = intrinsics.height, intrinsics.width
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.shape != (height, width):
        raise DataError(path, "corrupt PNG: the image data could not be decoded")
    return img


def write_depth_png(path: str | Path, depth: np.ndarray, compression: int = 3) -> None:
    """Write (H, W) uint16 millimetres as a 16-bit greyscale PNG (deterministic bytes).

    Rows are stored unfiltered (PNG filter type 0): on the synthetic 640x480 depth maps that encodes
    and decodes faster than libpng's default adaptive filtering and gives smaller files
    (docs/benchmarks.md); any PNG reader reads them."""
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D uint16 array, got {depth.dtype} {depth.shape}")
    ok, buf = cv2.imencode(".png", depth, [cv2.IMWRITE_PNG_COMPRESSION, compression,
                                           cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(buf.tobytes())


def read_skeleton_file(path: str | Path) -> np.ndarray:
    """Parse ``skeleton.txt``: (T, 21, 3) float32 millimetres in the depth camera's frame.
    Each line must be the frame index (0, 1, 2, ... in order) followed by 63 finite numbers."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "skeleton file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read skeleton file ({e.strerror or e})") from None
    binary = _NOT_TEXT.search(data)
    if binary:
        at = binary.start()
        raise DataError(path, f"not an ASCII text file (byte {at} is {binary.group()!r})", data.count(b"\n", 0, at) + 1)
    lines = _lines(data.decode("ascii"))
    while lines and not lines[-1].strip():  # tolerate trailing blank lines only
        lines.pop()
    if not lines:
        raise DataError(path, "empty skeleton file: the sequence has no frames")
    ncol = 1 + 3 * NUM_JOINTS
    out = np.empty((len(lines), ncol - 1), dtype=np.float64)
    for i, line in enumerate(lines):
        tokens = line.split()
        if len(tokens) != ncol:
            raise DataError(path, f"expected {ncol} numbers (frame index + 21 joints x 3), found {len(tokens)}", i + 1)
        try:
            values = [float(tok) for tok in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise DataError(path, f"column {tokens.index(bad) + 1}: {bad!r} is not a number", i + 1) from None
        if not all(math.isfinite(v) for v in values):
            col = next(c for c, v in enumerate(values) if not math.isfinite(v))
            raise DataError(path, f"column {col + 1}: {tokens[col]!r} is not finite", i + 1)
        if values[0] != i:
            raise DataError(path, f"frame index {tokens[0]} out of order: expected {i}", i + 1)
        out[i] = values[1:]
    return out.reshape(len(lines), NUM_JOINTS, 3).astype(np.float32)


def write_skeleton_file(path: str | Path, joints: np.ndarray) -> None:
    """Write (T, 21, 3) joints in mm as FPHA's ``skeleton.txt`` (frame index, then x y z per joint)."""
    joints = np.asarray(joints, dtype=np.float64).reshape(len(joints), NUM_JOINTS * 3)
    lines = [f"{t} " + " ".join(f"{v:.4f}" for v in row) for t, row in enumerate(joints)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def write_split_file(path: str | Path, train: list[SequenceRef], test: list[SequenceRef]) -> None:
    """Write the 1:1 action split in FPHA's layout: 'Training N', N entries, 'Test M', M entries."""
    out = [f"Training {len(train)}"] + [f"{r.key} {r.label}" for r in train]
    out += [f"Test {len(test)}"] + [f"{r.key} {r.label}" for r in test]
    Path(path).write_text("\n".join(out) + "\n", encoding="ascii")


def _lines(text: str) -> list[str]:
    """Lines as an editor numbers them: split on newlines only (str.splitlines also splits on
    form feeds and other control characters, which would shift every later line number)."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _is_float(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_split_file(path: str | Path) -> dict[str, list[tuple[SequenceRef, int]]]:
    """Parse the action split: {"train": [(ref, line_no)], "test": [...]}.  Checks headers,
    counts, labels (0..44, and agreeing with the action name) and duplicates.  Blank lines
    are ignored; any other line out of place is an error."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise DataError(path, f"split file {what}: is this an FPHA-shaped data root?")
    try:
        text = path.read_bytes().decode("ascii", errors="replace")
    except OSError as e:
        raise DataError(path, f"cannot read split file ({e.strerror or e})") from None
    rows = [(no, line) for no, line in enumerate(_lines(text), 1) if line.strip()]
    sides: dict[str, list[tuple[SequenceRef, int]]] = {"train": [], "test": []}
    seen: dict[str, int] = {}
    i = 0
    previous = None  # (header, count, line) of the section just read
    for header, side in zip(SPLIT_HEADERS, sides):
        if i >= len(rows):
            raise DataError(path, f"missing the {header!r} section header")
        no, line = rows[i]
        parts = line.split()
        if len(parts) != 2 or parts[0] != header or not parts[1].isdigit():
            if previous and _is_split_entry(line):
                raise _surplus_error(path, *previous, no)
            raise DataError(path, f"expected a header '{header} <count>', found {line!r}", no)
        count, header_no = int(parts[1]), no
        for no, line in rows[i + 1 : i + 1 + count]:
            if line.split()[0] in SPLIT_HEADERS:
                break
            sides[side].append((_parse_split_entry(path, line, no, seen), no))
        if len(sides[side]) < count:
            raise DataError(path, f"the {header!r} section announces {count} entries"
                            f" but only {len(sides[side])} follow", header_no)
        i += 1 + count
        previous = (header, count, header_no)
    if i < len(rows):
        no, line = rows[i]
        if _is_split_entry(line):
            raise _surplus_error(path, *previous, no)
        raise DataError(path, f"unexpected text after the 'Test' section: {line!r}", no)
    return sides


def _is_split_entry(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and _KEY.fullmatch(parts[0]) is not None


def _surplus_error(path: Path, header: str, count: int, header_no: int, extra_no: int) -> DataError:
    return DataError(path, f"the {header!r} section announces {count} entries but more follow"
                     f" (line {extra_no} is one more)", header_no)


def _parse_split_entry(path: Path, line: str, line_no: int, seen: dict[str, int]) -> SequenceRef:
    parts = line.split()
    if len(parts) != 2:
        raise DataError(path, f"expected 'Subject_<k>/<action>/<rep> <label>', found {line!r}", line_no)
    m = _KEY.fullmatch(parts[0])
    if not m:
        raise DataError(path, f"malformed sequence name {parts[0]!r}", line_no)
    subject, action, rep = int(m[1]), m[2], m[3]
    if action not in ACTION_INDEX:
        raise DataError(path, f"unknown action {action!r}", line_no)
    if not _LABEL.fullmatch(parts[1]):
        raise DataError(path, f"label {parts[1]!r} is not an integer (digits only)", line_no)
    label = int(parts[1])
    if not 0 <= label < NUM_ACTIONS:
        raise DataError(path, f"label {label} is outside 0..{NUM_ACTIONS - 1}", line_no)
    if label != ACTION_INDEX[action]:
        raise DataError(path, f"label {label} disagrees with action {action!r} (label {ACTION_INDEX[action]})", line_no)
    if parts[0] in seen:
        raise DataError(path, f"duplicate entry {parts[0]!r} (first on line {seen[parts[0]]})", line_no)
    seen[parts[0]] = line_no
    return SequenceRef(subject, action, rep, label)


def depth_frame_indices(depth_dir: Path) -> list[int]:
    """Indices of the ``depth_NNNN.png`` files in a folder; any other ``.png`` there is refused."""
    indices, misnamed = _scan_depth_dir(depth_dir)
    if misnamed:
        raise misnamed[0]
    return indices


def _scan_depth_dir(depth_dir: Path) -> tuple[list[int], list[DataError]]:
    """(sorted frame indices, one DataError per misnamed ``.png``) of a depth folder."""
    try:
        names = sorted(p.name for p in depth_dir.iterdir())
    except FileNotFoundError:
        raise DataError(depth_dir, "depth folder not found") from None
    except OSError as e:
        raise DataError(depth_dir, f"cannot list depth folder ({e.strerror or e})") from None
    indices, misnamed = [], []
    for name in names:
        m = DEPTH_NAME.fullmatch(name)
        if m:
            indices.append(int(m[1]))
        elif name.endswith(".png"):
            misnamed.append(DataError(depth_dir / name, "unexpected file name: depth frames are named depth_NNNN.png"))
    return sorted(indices), misnamed


# ----------------------------------------------------------------------------- dataset


class FPHA:
    """An FPHA-shaped data root (the real benchmark, or ``handfuse.synth``'s output).

    ``FPHA(root)`` parses and checks the split file at once and that each listed
    sequence exists; skeletons and frames are checked when read (``check()`` reads
    them all; :func:`check_root` reports every problem of a root in one pass).
    ``train``/``test`` are the 1:1 action split; ``pose_split()`` the cross-subject
    protocol.
    """

    def __init__(self, root: str | Path, intrinsics=FPHA_DEPTH, *, keep_going: bool = False):
        """Open ``root``.  With ``keep_going`` (for :func:`check_root`), split entries naming missing
        sequences are left out and kept in ``self.missing`` instead of raising; :meth:`check` reports them."""
        self.root = Path(root)
        self.intrinsics = intrinsics
        self._skeletons: dict[str, tuple[tuple, np.ndarray]] = {}  # read_skeleton's parsed, checked joints
        if not self.root.is_dir():
            raise DataError(self.root, "data root not found (expected an FPHA-shaped folder)")
        split_path = self.root / SPLIT_FILE
        sides = read_split_file(split_path)
        missing = {ref.key: e for entries in sides.values() for ref, line_no in entries
                   if ref.key not in IGNORED and (e := self._missing_error(ref, split_path, line_no))}
        if missing and not keep_going:
            raise next(iter(missing.values()))
        self.missing: list[DataError] = list(missing.values())
        skip = IGNORED | set(missing)
        self.train: list[SequenceRef] = [r for r, _ in sides["train"] if r.key not in skip]
        self.test: list[SequenceRef] = [r for r, _ in sides["test"] if r.key not in skip]

    def _missing_error(self, ref: SequenceRef, split_path: Path, line_no: int) -> DataError | None:
        """The error for a split entry whose depth or pose folder is absent or inaccessible; None if both are there."""
        for folder in (self.depth_dir(ref), self.skeleton_path(ref).parent):
            try:
                if folder.is_dir():
                    continue
                why = "not found"
            except OSError as e:  # pathlib raises on EACCES (an unsearchable parent folder)
                why = f"cannot be accessed: {e.strerror or e}"
            return DataError(split_path, f"entry {ref.key!r} names a missing sequence ({folder} {why})", line_no)
        return None

    # paths
    def depth_dir(self, ref: SequenceRef) -> Path:
        return self.root / VIDEO_DIR / ref.key / "depth"

    def depth_path(self, ref: SequenceRef, frame: int) -> Path:
        return self.depth_dir(ref) / f"depth_{frame:04d}.png"

    def skeleton_path(self, ref: SequenceRef) -> Path:
        return self.root / POSE_DIR / ref.key / "skeleton.txt"

    # splits
    @property
    def sequences(self) -> list[SequenceRef]:
        return self.train + self.test

    def split(self, name: str) -> list[SequenceRef]:
        if name not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {name!r}")
        return self.sequences if name == "all" else getattr(self, name)

    def pose_split(self, train_subjects=POSE_TRAIN_SUBJECTS) -> tuple[list[SequenceRef], list[SequenceRef]]:
        """FPHA's cross-subject hand-pose protocol over all sequences: (train, test)."""
        train = [r for r in self.sequences if r.subject in train_subjects]
        return train, [r for r in self.sequences if r.subject not in train_subjects]

    @cached_property
    def subjects(self) -> tuple[int, ...]:
        return tuple(sorted({r.subject for r in self.sequences}))

    # reading
    def read_skeleton(self, ref: SequenceRef) -> np.ndarray:
        """(T, 21, 3) float32 joints in mm, checked against the depth frames on disk.

        Parsed once per root object: a later call returns a copy of the checked joints while the
        skeleton file and the depth folder are unchanged on disk (same size and modification
        times), so building the action recogniser's datasets for every run of a notebook does not
        parse every ``skeleton.txt`` again."""
        path, depth_dir = self.skeleton_path(ref), self.depth_dir(ref)
        try:
            st, sd = path.stat(), depth_dir.stat()
            stamp = (st.st_size, st.st_mtime_ns, sd.st_mtime_ns)
        except OSError:
            stamp = None  # read below, which names the problem
        seen = self._skeletons.get(ref.key)
        if stamp is not None and seen is not None and seen[0] == stamp:
            return seen[1].copy()
        joints = read_skeleton_file(path)
        self._check_frames(ref, len(joints), depth_frame_indices(depth_dir))
        if stamp is not None:
            self._skeletons[ref.key] = (stamp, joints.copy())
        return joints

    def num_frames(self, ref: SequenceRef) -> int:
        return len(self.read_skeleton(ref))

    def read_depth(self, ref: SequenceRef, frame: int) -> np.ndarray:
        return read_depth_png(self.depth_path(ref, frame), self.intrinsics)

    def _check_frames(self, ref: SequenceRef, n: int, found: list[int]) -> None:
        """Refuse a sequence whose depth frames on disk are not exactly 0..n-1."""
        expected = list(range(n))
        if found == expected:
            return
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        if missing:
            raise DataError(self.depth_path(ref, missing[0]), f"depth frame missing: {self.skeleton_path(ref)} has {n} frames"
                            f" but {len(missing)} of their depth files are absent")
        raise DataError(self.depth_path(ref, extra[0]), f"extra depth frame: {self.skeleton_path(ref)} has only {n} frames"
                        f" (frames 0..{n - 1}), yet {len(extra)} more depth files exist")

    def check(self, decode: bool = False) -> list[DataError]:
        """Every problem in the root, in one pass (empty list = healthy).  Each sequence's folder
        names, skeleton, frame count and every depth PNG present are checked separately, so one
        problem does not hide another.  With ``decode`` every PNG is fully decoded; otherwise
        only its header and end are read.  Split entries naming missing sequences come first."""
        problems: list[DataError] = list(self.missing)  # non-empty only when opened with keep_going
        for ref in self.sequences:
            try:
                frames, misnamed = _scan_depth_dir(self.depth_dir(ref))
            except DataError as e:  # the folder vanished after FPHA(root) saw it
                frames, misnamed = None, [e]
            problems += misnamed
            try:
                joints = read_skeleton_file(self.skeleton_path(ref))
                if frames is not None:
                    self._check_frames(ref, len(joints), frames)
            except DataError as e:
                problems.append(e)
            for t in frames or []:
                try:
                    if decode:
                        self.read_depth(ref, t)
                    else:
                        check_png_header(self.depth_path(ref, t), self.intrinsics)
                except DataError as e:
                    problems.append(e)
        return problems


def check_root(root: str | Path, decode: bool = False, intrinsics=FPHA_DEPTH) -> tuple[list[DataError], int, int]:
    """Every problem of a data root in one pass: (problems, sequences, frames).  The counts are the
    healthy root's summary (frames is 0 while there are problems).  A fault in the root or its split
    file is the one problem reported, since nothing past it can be checked.  What ``python -m handfuse
    check`` runs; ``decode`` fully decodes every PNG instead of reading its header and end."""
    try:
        fpha = FPHA(root, intrinsics, keep_going=True)
    except DataError as e:  # the root or its split file: the one problem that stops everything
        return [e], 0, 0
    problems = fpha.check(decode)
    if problems:
        return problems, len(fpha.sequences), 0
    frames = sum(len(depth_frame_indices(fpha.depth_dir(ref))) for ref in fpha.sequences)
    return problems, len(fpha.sequences), frames


def check_png_header(path: Path, intrinsics=FPHA_DEPTH) -> None:
    """Cheap check of a depth PNG: signature, IHDR (16-bit grey, right size) and IEND, without decoding."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8))
            tail = f.read(8)
    except OSError as e:
        raise DataError(path, f"cannot read depth frame ({e.strerror or e})") from None
    _check_png(path, head, size, tail, intrinsics)


def _check_png(path: Path, head: bytes, size: int, tail: bytes, intrinsics) -> None:
    """Signature, IHDR (16-bit grey, the camera's size) and IEND of a PNG, from its first 26 and last 8 bytes."""
    if not head.startswith(PNG_SIGNATURE):
        raise DataError(path, "not a PNG file (bad signature)")
    if size < 45 or tail != PNG_IEND:
        raise DataError(path, f"truncated PNG ({size} bytes, no IEND chunk at the end)")
    if head[12:16] != b"IHDR":
        raise DataError(path, "corrupt PNG: the first chunk is not the IHDR header")
    width, height, bit_depth, colour = struct.unpack(">IIBB", head[16:26])
    if bit_depth != 16 or colour != 0:
        kind = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(colour, f"colour type {colour}")
        raise DataError(path, f"expected a 16-bit greyscale depth PNG, found {bit_depth}-bit {kind}")
    if (width, height) != (intrinsics.width, intrinsics.height):
        raise DataError(path, f"expected {intrinsics.width}x{intrinsics.height} pixels, found {width}x{height}")
