"""Ways to break a valid FPHA tree, shared by the data tests (``test_fpha``, ``test_bad_input``).

Each builder returns a corruption: a function ``root -> None`` that breaks one thing of the
tree under ``root`` in place.  Paths are relative to the root; lines and columns are 1-based.
The sequences are conftest's tiny tree (``conftest.TINY_SEQUENCES``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from handfuse.fpha import POSE_DIR, VIDEO_DIR

Corruption = Callable[[Path], None]

# conftest's tiny tree: A (4 frames) and B (3) train, C (5) and D (3) test
A, B, C, D = "Subject_1/open_juice_bottle/1", "Subject_1/close_milk/1", "Subject_2/open_juice_bottle/2", "Subject_3/high_five/2"


def skel(key: str) -> str:
    return f"{POSE_DIR}/{key}/skeleton.txt"


def depth(key: str, t: int | str) -> str:
    """A depth frame's path: frame number ``t``, or a file name as it is."""
    return f"{VIDEO_DIR}/{key}/depth/" + (f"depth_{t:04d}.png" if isinstance(t, int) else t)


def edit_line(rel: str, line: int, edit: Callable[[str], str]) -> Corruption:
    """Replace ``line`` of a text file by ``edit(line)`` (which may add lines with '\\n')."""
    def corrupt(root: Path) -> None:
        path = root / rel
        lines = path.read_text().split("\n")
        lines[line - 1] = edit(lines[line - 1])
        path.write_text("\n".join(lines))
    return corrupt


def set_token(rel: str, line: int, column: int, value: str) -> Corruption:
    """Set ``column`` of ``line`` of a whitespace-separated text file to ``value``."""
    def edit(text: str) -> str:
        tokens = text.split()
        tokens[column - 1] = value
        return " ".join(tokens)
    return edit_line(rel, line, edit)


def write_bytes(rel: str, data: bytes) -> Corruption:
    return lambda root: (root / rel).write_bytes(data)


def edit_bytes(rel: str, edit: Callable[[bytes], bytes]) -> Corruption:
    def corrupt(root: Path) -> None:
        path = root / rel
        path.write_bytes(edit(path.read_bytes()))
    return corrupt


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def write_image(rel: str, image: np.ndarray) -> Corruption:
    return write_bytes(rel, png_bytes(image))


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_idat(data: bytes) -> bytes:
    """Invert 8 bytes in the middle of the IDAT chunk, leaving the header and IEND intact (the CRC
    now wrong: only a full decode notices)."""
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4 : at], "big")
    mid = at + 4 + length // 2
    out = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 8]) + data[mid + 8 :]
    assert out[:33] == data[:33] and out[-12:] == data[-12:] and out != data
    return out


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def remove(*rels: str) -> Corruption:
    def corrupt(root: Path) -> None:
        for rel in rels:
            _delete(root / rel)
    return corrupt


def copy(src: str, dst: str) -> Corruption:
    return lambda root: shutil.copyfile(root / src, root / dst)


def replace_by_dir(rel: str) -> Corruption:
    def corrupt(root: Path) -> None:
        (root / rel).unlink()
        (root / rel).mkdir()
    return corrupt


def replace_by_dangling_link(rel: str) -> Corruption:
    def corrupt(root: Path) -> None:
        _delete(root / rel)
        (root / rel).symlink_to(root / "nowhere")
    return corrupt


def both(*corruptions: Corruption) -> Corruption:
    def corrupt(root: Path) -> None:
        for c in corruptions:
            c(root)
    return corrupt
