"""Files written atomically: whole or not at all.

A reader (another pool worker, a notebook, a rerun after a crash) sees either the
old file or the complete new one, never a torn one: the content goes to a temporary
file beside the target, is flushed to disk, then renamed over it (a rename within
one folder is atomic).  A write that fails leaves the target as it was, removes the
temporary file, and raises one ``OSError`` that names the target and the disk's
free space (a full disk is the usual cause, and some writers, torch's among them,
report it in words that name neither).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, what: str = "the file",
                errors: tuple[type[BaseException], ...] = (OSError,)) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends it is flushed to disk and
    renamed over ``path``.  An exception of a type in ``errors`` raised inside the block becomes one
    OSError ("<path>: could not write <what> (<error>); <n> GiB free on that disk"); any exception
    removes the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, errors):
            free = shutil.disk_usage(path.parent).free / 2**30
            raise OSError(f"{path}: could not write {what} ({type(e).__name__}: {e}); "
                          f"{free:.1f} GiB free on that disk") from e
        raise


def write_text(path: str | Path, text: str, what: str = "the file") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`).  Returns the path."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, what: str = "the file", **dumps) -> Path:
    """Write ``obj`` as JSON (``json.dumps`` with ``dumps``) to ``path`` atomically.  Returns the path."""
    return write_text(path, json.dumps(obj, **dumps), what)
