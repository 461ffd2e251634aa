"""Results files: where one run of the workbook writes its numbers, what each file records, and the
refusal to mix two runs.

A notebook writes its numbers to ``<out>/results/<name>.json``, where ``out`` is the notebook's
parameter (``python -m handfuse reproduce --out DIR`` passes ``DIR``) and ``runs/<preset>`` when it is
None.  Trained models are not results: they stay in the shared, content-keyed store
``runs/<preset>/models`` (:mod:`handfuse.runs`) whatever ``out`` is.

Every results file records the run it belongs to (:func:`run_record`): the notebook's
``parameters`` (after None is resolved to the headline's), the ``data`` source and the data's
fingerprint.  Two rules keep runs apart:

- :meth:`ResultsFile.claim` refuses, in the notebook's set-up cell and before any work, a results
  file that already holds a run with other parameters or other data, naming what differs;
- :func:`check_one_run` refuses to summarise a folder whose files disagree on the data or on any
  parameter they share, naming the files and what differs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .paths import runs_dir

SUMMARY = ("summary",)  # written by 05 from the others: never one of the gathered results


class ResultsConflict(FileExistsError):
    """A results file, or a folder of them, belongs to another run.  The message names the file(s)
    and every parameter or data fingerprint that differs."""


def out_dir(preset: str, out: str | Path | None = None) -> Path:
    """Where one run of the workbook puts its outputs: ``out``, else ``runs/<preset>``."""
    return Path(out) if out is not None else runs_dir() / preset


def results_dir(preset: str, out: str | Path | None = None) -> Path:
    """``<out>/results``: the results files of one run (:func:`out_dir`)."""
    return out_dir(preset, out) / "results"


def write_json(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as JSON atomically (:mod:`handfuse.atomic`); records are written with
    their ``to_json``, arrays and tensors as lists.  Returns the path."""
    return atomic.write_json(path, payload, "the results file", indent=1, default=_jsonable)


def _jsonable(o):
    """What json cannot write itself: records (``to_json``), arrays and tensors (``tolist``), else ``str``."""
    if hasattr(o, "to_json"):
        return o.to_json()
    return o.tolist() if hasattr(o, "tolist") else str(o)


def plain(value):
    """``value`` as JSON gives it back (tuples become lists, records dicts), so that a parameter in
    memory compares equal to the same parameter read from a file."""
    return json.loads(json.dumps(value, default=_jsonable))


def run_record(source: str, fingerprint: str, parameters: dict) -> dict:
    """What every results file of a run records about that run: the data source, the data's
    fingerprint and the notebook's parameters."""
    return {"data": source, "data_fingerprint": fingerprint, "parameters": plain(parameters)}


def differences(a: dict, b: dict) -> list[str]:
    """What two run records (:func:`run_record`, or results files holding one) disagree on, as
    ``"name: A against B"`` lines: the data, then every parameter both record.  A record without
    parameters (written before they were recorded) differs from every record that has them."""
    found = []
    if (a.get("data"), a.get("data_fingerprint")) != (b.get("data"), b.get("data_fingerprint")):
        found.append(f"data: {a.get('data')} (fingerprint {a.get('data_fingerprint')}) against "
                     f"{b.get('data')} (fingerprint {b.get('data_fingerprint')})")
    pa, pb = a.get("parameters"), b.get("parameters")
    if pa is None or pb is None:
        return found + ["parameters: not recorded (a results file written by an older handfuse)"] if pa != pb else found
    return found + [f"{k}: {pa[k]!r} against {pb[k]!r}" for k in sorted(pa.keys() & pb.keys())
                    if plain(pa[k]) != plain(pb[k])]


@dataclass
class ResultsFile:
    """One notebook's results file, claimed for one run before any work (:meth:`claim`) and written at
    the end (:meth:`write`) with the run's record added."""

    path: Path
    record: dict = field(default_factory=dict)

    def claim(self) -> "ResultsFile":
        """Refuse (:class:`ResultsConflict`) when the file already holds another run's results; the
        same run's results (a re-run) will be replaced."""
        if self.path.is_file():
            held = json.loads(self.path.read_text())
            diffs = differences(self.record, held)
            if diffs:
                raise ResultsConflict(
                    f"{self.path} holds the results of another run ({'; '.join(diffs)}; this run's first): give "
                    "this run its own folder with the notebook parameter out (reproduce --out), or delete that file")
        return self

    def write(self, payload: dict) -> Path:
        """Write ``payload`` with the run's record (checked again: another process may have written
        meanwhile).  Returns the path."""
        self.claim()
        return write_json(self.path, {**payload, **self.record})


def load_results(folder: str | Path) -> dict[str, dict]:
    """Every ``<name>.json`` results file of a results folder (not the summary), by name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json")) if p.stem not in SUMMARY}


def check_one_run(results: dict[str, dict]) -> None:
    """Refuse (:class:`ResultsConflict`) results files that come from different runs: any two that
    differ in their data or in a parameter both record, naming the two files and what differs.  A
    file made on datasets of its own (``own_data``: ``08``'s sweep) is held to the parameters only."""
    def pair(a: str, b: str) -> list[str]:
        ra, rb = results[a], results[b]
        if ra.get("own_data") or rb.get("own_data"):
            ra, rb = ({k: v for k, v in r.items() if k not in ("data", "data_fingerprint")} for r in (ra, rb))
        return differences(ra, rb)

    names = sorted(results)
    problems = [f"{a}.json against {b}.json: {'; '.join(d)}" for i, a in enumerate(names) for b in names[i + 1:]
                if (d := pair(a, b))]
    if problems:
        raise ResultsConflict("the results files come from different runs, so they cannot be summarised together:\n  "
                              + "\n  ".join(problems) + "\nrun every notebook with the same data and parameters "
                              "into one out folder (reproduce --out), or summarise each folder on its own")


def shared_parameters(results: dict[str, dict]) -> dict[str, tuple[object, list[str]]]:
    """Every parameter of the gathered results files: ``{name: (value, [files that record it])}``
    (one value each, once :func:`check_one_run` has passed)."""
    out: dict[str, tuple[object, list[str]]] = {}
    for name, res in sorted(results.items()):
        for key, value in (res.get("parameters") or {}).items():
            out.setdefault(key, (value, []))[1].append(name)
    return dict(sorted(out.items()))
