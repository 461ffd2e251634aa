"""The one timing helper of the benchmarks: median and spread of repeated wall-clock runs."""
from __future__ import annotations

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
