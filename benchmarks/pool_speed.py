"""Fine-tuning runs side by side (one thread each) against one after the other (all threads).

``python -m benchmarks.pool_speed [--preset cpu] [--batches 12] [--pairs 3]``
(also the ``pool`` stage of ``python -m benchmarks``).

The same jobs both ways: each job fine-tunes a freshly built method (``baseline`` or
``feedback`` with FiLM in the FC layers at p_eq = 0.95, alternately) for one epoch
over a fixed list of the preset's training batches, forward, backward and Adam step,
as :func:`handfuse.fusion.run_many` does on CPU.  One after the other: in this process,
with torch's default thread count.  Side by side: :func:`handfuse.pool.map_jobs`, one
single-threaded worker per core (workers started and warmed up before timing).  The two
ways alternate, pair by pair (the machine's speed drifts), and each pair gives a ratio:
how many times more fine-tuning per second side by side gives.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from handfuse import pool

from .timing import cli

_batches: dict = {}  # (preset, n) -> the fixed training batches, built once per process
JOBS = [("baseline", {}), ("feedback", {"film": "fc", "p_eq": 0.95})]


def _fixed(preset_name: str, n: int) -> list[dict]:
    if (preset_name, n) not in _batches:
        from handfuse.config import get_preset

        from .fusion_speed import fixed_batches, train_sequences

        _batches[(preset_name, n)] = fixed_batches(train_sequences(preset_name), get_preset(preset_name).train_fuse.batch_size, n)
    return _batches[(preset_name, n)]


def _job(job: tuple) -> float:
    """One fine-tuning epoch of a fresh method over the fixed batches; returns its seconds."""
    from handfuse.config import get_preset

    from .fusion_speed import fresh_method, train_epoch

    preset_name, n, name, options = job
    batches = _fixed(preset_name, n)
    torch.manual_seed(0)
    model, opt = fresh_method(get_preset(preset_name), name, options)
    t0 = time.perf_counter()
    train_epoch(model, opt, batches)
    return time.perf_counter() - t0


def run(preset_name: str = "cpu", batches: int = 12, pairs: int = 3) -> dict:
    n_workers = pool.workers()
    jobs = [(preset_name, batches, *JOBS[i % len(JOBS)]) for i in range(2 * max(n_workers, 2))]
    _fixed(preset_name, batches)
    pool.map_jobs(_job, jobs[:n_workers], progress=False)  # start and warm up the workers
    _job(jobs[0])  # and this process
    ratios, seq, par = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        for job in jobs:
            _job(job)
        t1 = time.perf_counter()
        pool.map_jobs(_job, jobs, progress=False)
        t2 = time.perf_counter()
        seq.append(t1 - t0)
        par.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return {"preset": preset_name, "batches_per_job": len(_fixed(preset_name, batches)), "jobs": len(jobs),
            "workers": n_workers, "threads_one_after_the_other": torch.get_num_threads(), "cores": os.cpu_count(),
            "one_after_the_other_s": statistics.median(seq), "side_by_side_s": statistics.median(par),
            "speedup": {"median": statistics.median(ratios), "spread": [min(ratios), max(ratios)]}}


def report(r: dict) -> None:
    s = r["speedup"]
    print(f"fusion runs side by side, preset {r['preset']}: {r['jobs']} fine-tuning jobs of {r['batches_per_job']} batches; "
          f"one after the other on {r['threads_one_after_the_other']} threads {r['one_after_the_other_s']:.1f} s, "
          f"side by side in {r['workers']} single-threaded workers {r['side_by_side_s']:.1f} s: "
          f"x{s['median']:.2f} ({s['spread'][0]:.2f}-{s['spread'][1]:.2f}, paired runs)")


def main() -> None:
    cli(__doc__, run, report, batches=12, pairs=3)


if __name__ == "__main__":
    main()
