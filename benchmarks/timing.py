"""The one timing helper of the benchmarks: median and spread of repeated wall-clock runs."""
from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(fn, repeats: int, warmup: int = 0) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)


def report_and_save(result: dict, report, path: str | None) -> None:
    """Print ``result`` with ``report`` and, if ``path`` is given, also write it there as JSON."""
    report(result)
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def cli(doc: str, run, report, **options: int) -> None:
    """The command line of a benchmark module: ``--preset`` (default cpu), the integer ``options``
    with their defaults, in ``run``'s order after the preset, and ``--json`` (also write the result there)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    for name, default in options.items():
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = vars(ap.parse_args())
    report_and_save(run(args["preset"], *(args[name] for name in options)), report, args["json"])
