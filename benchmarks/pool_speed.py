"""Runs side by side (one thread each) against one after the other (all threads).

``python -m benchmarks.pool_speed [--preset cpu] [--batches 12] [--pairs 3]``
(also the ``pool`` stage of ``python -m benchmarks``).

Two kinds of jobs, timed apart, the same jobs both ways.  Fine-tuning: a freshly built
method (``baseline`` or ``feedback`` with FiLM in the FC layers at p_eq = 0.95,
alternately) for one epoch over a fixed list of the preset's training batches, forward,
backward and Adam step.  Pre-training: a freshly built DeepPrior++ HPE, batch norms on
batch statistics, over ``4 x batches`` fixed batches of the preset's pre-training batch
size of training crops.  Both as :func:`handfuse.grid.run_many` runs them on CPU.
One after the other: in this process,
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
from handfuse.train import adam

from .timing import cli

_batches: dict = {}  # (preset, n) -> the fixed training batches, built once per process
_crops: dict = {}  # (preset, n) -> fixed pre-training batches of crops, built once per process
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


def _pretraining_batches(preset_name: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if (preset_name, n) not in _crops:
        from handfuse.cache import get_cache
        from handfuse.config import get_preset
        from handfuse.datasets import FrameDataset
        from handfuse.fpha import FPHA
        from handfuse.paths import ensure_synthetic

        preset = get_preset(preset_name)
        fpha = FPHA(ensure_synthetic(preset_name))
        data = FrameDataset(get_cache(fpha, preset.preprocess, progress=False), fpha.train)
        size = preset.train_hpe.batch_size
        batches = [data.batch(list(range(i * size, (i + 1) * size))) for i in range(min(n, len(data) // size))]
        _crops[(preset_name, n)] = [(b["depth"], b["joints"]) for b in batches]
    return _crops[(preset_name, n)]


def _pretraining_job(job: tuple) -> float:
    """Pre-training steps of a fresh DeepPrior++ HPE over the fixed crop batches; returns their seconds."""
    from handfuse.config import get_preset
    from handfuse.models.hpe import HPE

    preset_name, n = job
    batches = _pretraining_batches(preset_name, n)
    torch.manual_seed(0)
    model = HPE(get_preset(preset_name).hpe)
    model.init_pca(torch.cat([joints for _, joints in batches]))
    if model.channels_last_safe:
        model.to_channels_last()
    model.train()
    opt = adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    t0 = time.perf_counter()
    for depth, joints in batches:
        loss = model(depth, None, joints)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _speedup(fn, jobs: list, pairs: int, n_workers: int) -> dict:
    """``jobs`` one after the other here, then side by side in the workers, ``pairs`` times alternately."""
    pool.map_jobs(fn, jobs[:n_workers], progress=False)  # start and warm up the workers
    fn(jobs[0])  # and this process
    ratios, seq, par = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        for job in jobs:
            fn(job)
        t1 = time.perf_counter()
        pool.map_jobs(fn, jobs, progress=False)
        t2 = time.perf_counter()
        seq.append(t1 - t0)
        par.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return {"jobs": len(jobs), "one_after_the_other_s": statistics.median(seq), "side_by_side_s": statistics.median(par),
            "speedup": {"median": statistics.median(ratios), "spread": [min(ratios), max(ratios)]}}


def run(preset_name: str = "cpu", batches: int = 12, pairs: int = 3) -> dict:
    n_workers = pool.workers()
    n_jobs = 2 * max(n_workers, 2)
    jobs = [(preset_name, batches, *JOBS[i % len(JOBS)]) for i in range(n_jobs)]
    _fixed(preset_name, batches)
    finetuning = _speedup(_job, jobs, pairs, n_workers)
    _pretraining_batches(preset_name, 4 * batches)
    pretraining = _speedup(_pretraining_job, [(preset_name, 4 * batches)] * n_jobs, pairs, n_workers)
    return {"preset": preset_name, "batches_per_job": len(_fixed(preset_name, batches)), "workers": n_workers,
            "threads_one_after_the_other": torch.get_num_threads(), "cores": os.cpu_count(), **finetuning,
            "pretraining": {"batches_per_job": len(_pretraining_batches(preset_name, 4 * batches)), **pretraining}}


def report(r: dict) -> None:
    for label, k, what in (("fusion runs", r, "fine-tuning"), ("pre-trainings", r["pretraining"], "HPE pre-training")):
        s = k["speedup"]
        print(f"{label} side by side, preset {r['preset']}: {k['jobs']} {what} jobs of {k['batches_per_job']} batches; "
              f"one after the other on {r['threads_one_after_the_other']} threads {k['one_after_the_other_s']:.1f} s, "
              f"side by side in {r['workers']} single-threaded workers {k['side_by_side_s']:.1f} s: "
              f"x{s['median']:.2f} ({s['spread'][0]:.2f}-{s['spread'][1]:.2f}, paired runs)")


def main() -> None:
    cli(__doc__, run, report, batches=12, pairs=3)


if __name__ == "__main__":
    main()
