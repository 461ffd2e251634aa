"""Independent jobs side by side: one single-threaded worker process per core.

This module only schedules.  :func:`map_jobs` runs a module-level function over picklable jobs
in worker processes, each job after the jobs it needs (``after``), a freed worker taking the first
ready job; :func:`one_thread` pins torch to one thread for a block.  What the jobs are (pre-trainings,
fine-tunings, scorings) is :mod:`handfuse.grid`'s business.

A fine-tuning run of the ``cpu`` preset is made of small convolutions, an LSTM and an optimiser
loop over many small tensors, so a second thread inside one run buys little, and runs side by
side on one thread each get more done on the 2-core machine than the same runs one after the
other on two threads (``python -m benchmarks.pool_speed``; ``docs/benchmarks.md``).  Every
pre-training, fusion run and score on CPU runs on one thread wherever it runs, so its numbers do
not depend on how many workers there were, or on the machine's core count.

``HANDFUSE_WORKERS`` sets the number of workers (default: the machine's cores; ``1``
runs everything in the calling process).  Workers start by ``forkserver`` (never a fork
of a threaded parent), once per process, and are reused by later calls.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

import torch
from tqdm.auto import tqdm

_pool: ProcessPoolExecutor | None = None
_size = 0
_busy = False  # in a worker: whether it is running a job
_ENV_PREFIX = "HANDFUSE_"  # the folders a job writes to travel with it: a worker's own environment may be stale


def workers() -> int:
    """How many runs go side by side: ``HANDFUSE_WORKERS``, else the machine's cores."""
    env = os.environ.get("HANDFUSE_WORKERS")
    if env is None:
        return os.cpu_count() or 1
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"HANDFUSE_WORKERS must be an integer >= 1, got {env!r}")
    return n


@contextlib.contextmanager
def one_thread(device: str | torch.device = "cpu"):
    """Within this block torch runs on one thread (CPU work only; on CUDA nothing changes)."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init() -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, _interrupted)


def _interrupted(signum, frame) -> None:
    """SIGINT in a worker.  Jupyter interrupts a kernel's whole process group, workers included, both
    when a user interrupts a cell and when it shuts the kernel down (papermill does, after the last
    cell).  A job stops with KeyboardInterrupt, which goes back to :func:`map_jobs`'s caller; an idle
    worker carries on waiting (it would otherwise die printing a traceback, and break the pool)."""
    if _busy:
        raise KeyboardInterrupt


def _pool_of(n: int) -> ProcessPoolExecutor:
    global _pool, _size
    if _pool is None or _size != n:
        shutdown()
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(["handfuse.grid"])
        _pool, _size = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init), n
    return _pool


def shutdown() -> None:
    """Stop the workers (they are started again by the next :func:`map_jobs`)."""
    global _pool, _size
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
    _pool, _size = None, 0


atexit.register(shutdown)


def _call(fn, env: dict, job):
    for k in [k for k in os.environ if k.startswith(_ENV_PREFIX)]:
        del os.environ[k]
    os.environ.update(env)
    global _busy
    _busy = True
    try:
        return fn(job)
    finally:
        _busy = False


def map_jobs(fn, jobs: list, describe=str, desc: str = "runs", progress: bool = True,
             after: list | None = None) -> list:
    """``fn(job)`` for every job, side by side in :func:`workers` processes; results in job order.

    ``after[i]``, if given, holds the indices of the jobs that job ``i`` needs finished first
    (a pre-training before the fine-tunings that start from it); they must come before ``i``.
    A worker that frees up takes the first job, in list order, whose needs are met, so list
    order is priority order.  ``fn`` must be a module-level function and the jobs picklable.
    The first failure stops the rest and is raised as a RuntimeError naming its job
    (``describe(job)``), with the worker's error chained."""
    if not jobs:
        return []
    needs = [set(after[i]) if after else set() for i in range(len(jobs))]
    for i, need in enumerate(needs):
        if any(not 0 <= j < i for j in need):
            raise ValueError(f"map_jobs: job {i} ({describe(jobs[i])}) must come after the jobs it needs: {sorted(need)}")
    n = min(workers(), len(jobs))
    if n <= 1:
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="run", disable=not progress)]
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    pool = _pool_of(n)
    out, waiting, running = [None] * len(jobs), list(range(len(jobs))), {}
    with tqdm(total=len(jobs), desc=f"{desc} ({n} side by side)", unit="run", disable=not progress) as bar:
        while waiting or running:
            for i in [i for i in waiting if not needs[i]][: n - len(running)]:  # one job per free worker
                waiting.remove(i)
                running[pool.submit(_call, fn, env, jobs[i])] = i
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                if f.exception() is not None:
                    for p in running:
                        p.cancel()
                    wait(running)
                    shutdown()  # a crashed worker breaks the pool: the next call starts a fresh one
                    raise RuntimeError(f"{describe(jobs[i])}: failed in a worker process "
                                       f"({type(f.exception()).__name__}: {f.exception()})") from f.exception()
                out[i] = f.result()
                for need in needs:
                    need.discard(i)
                bar.update(1)
    return out
