"""Atomic writes: a failed write leaves the old file, no temporary file, and one error naming the file."""
import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest

from handfuse import atomic
from handfuse.localise import LOCATED, Located, write_centres_csv
from handfuse.results import write_json as write_results
from handfuse.train import _write_json as write_train_json


def _full_disk(monkeypatch):
    """Path.write_text writes half of its text, then fails as a full disk does."""
    real = Path.write_text

    def half(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half)


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "deep" / "er" / "a.json"
    assert atomic.write_json(path, {"a": [1, 2]}, indent=1) == path
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


@pytest.mark.parametrize("write, what", [
    (lambda p: atomic.write_text(p, "new " * 100, "the notes"), "the notes"),
    (lambda p: write_results(p, {"rows": list(range(100))}), "the results file"),
    (lambda p: write_train_json(p, {"history": list(range(100))}), "the file"),
])
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, write, what):
    path = tmp_path / "result.json"
    path.write_text("old")
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: could not write {what} \(OSError: .*No space left"
                                      r".*\); [0-9.]+ GiB free on that disk"):
        write(path)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # the torn temporary file is gone


def test_other_errors_pass_through_and_leave_nothing(tmp_path):
    """Only the listed error types are reworded: a bug inside the block stays the bug it is."""
    path = tmp_path / "x.txt"
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("partial")
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_the_centres_csv_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    located = Located(np.array([[1.0, 2.0, 400.0]], np.float32), np.array([[320.0, 240.0]], np.float32),
                      [LOCATED], "test")
    path = tmp_path / "centres.csv"
    write_centres_csv(path, located)
    assert path.read_text().splitlines() == ["frame,u,v,z_mm,status", "0,320.00,240.00,400.00,located"]
    import csv

    real = csv.writer

    class Broken:
        def __init__(self, f):
            self.f = f

        def writerow(self, row):
            if row[0] == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(self.f).writerow(row)

    monkeypatch.setattr(csv, "writer", Broken)
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: could not write the centres"):
        write_centres_csv(path, located)
    assert path.read_text().splitlines()[1] == "0,320.00,240.00,400.00,located"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centres.csv"]
