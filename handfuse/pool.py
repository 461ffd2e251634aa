"""Independent jobs side by side: single-threaded CPU worker processes, or several per GPU.

This module only schedules.  :func:`map_jobs` runs a module-level function over picklable jobs
in worker processes, each job after the jobs it needs (``after``), a freed worker taking the first
ready job; :func:`one_thread` pins torch to one thread for a block.  What the jobs are (pre-trainings,
fine-tunings, scorings) is :mod:`handfuse.grid`'s business.

**On CPU** there is one single-threaded worker per core.  A fine-tuning run of the ``cpu`` preset is
made of small convolutions, an LSTM and an optimiser loop over many small tensors, so a second
thread inside one run buys little, and runs side by side on one thread each get more done on the
2-core machine than the same runs one after the other on two threads (``python -m
benchmarks.pool_speed``; ``docs/benchmarks.md``).  Every pre-training, fusion run and score on CPU
runs on one thread wherever it runs, so its numbers do not depend on how many workers there were,
or on the machine's core count.  ``HANDFUSE_WORKERS`` sets the number of workers (default: the
machine's cores; ``1`` runs everything in the calling process).

**On CUDA** one run leaves a large GPU mostly idle (a paper-sized training step takes 18 ms on an
H200, of which the GPU is busy 10 ms: the rest is the host launching kernels), so ``device="cuda"``
runs :func:`workers_per_gpu` workers on every visible GPU: one set of workers per device, each
worker pinned to its GPU by ``CUDA_VISIBLE_DEVICES`` set in its initialiser, before anything in it
touches CUDA (a job's ``"cuda"`` then means that GPU, so run folders and numbers are those of the
same run alone).  ``device="cuda:N"`` runs them all on GPU N, unpinned (the device string pins).
:func:`slots` maps (devices, workers per device) to worker slots; a ready job goes to the device
with the most idle workers.  Each run is seeded by its own seed and shares nothing with the others.

Workers per GPU (:func:`per_gpu_rule`), in this order:

1. ``HANDFUSE_WORKERS_PER_GPU``, an integer >= 1, taken as it is;
2. the measurement ``benchmarks/gpu/workers.json`` (:data:`MEASURED`), used only when its
   ``device`` is this GPU's name (``torch.cuda.get_device_name()``): the smallest worker count
   whose throughput is within 5 % of the best measured one;
3. otherwise the fallback :data:`FALLBACK_PER_GPU` = 2 (two runs about fill an H200 whose step is
   10 ms of GPU work in 18 ms: conservative, never measured as best);

then, for 2 and 3, bounded by GPU memory (``0.9 * memory_gib / (one worker's peak)`` when the
file measured peaks) and by the CPU cores (``cores // gpus``: each worker needs a core to feed its
GPU).  The measurement file, written by the GPU check (``scripts/gpu-check.sh``, through
``python -m benchmarks.gpu_projection``)::

    {"device": "NVIDIA H200",            # torch.cuda.get_device_name() where it was measured
     "runs_per_hour": {"1": 41.0, "2": 70.5, "4": 92.0, "8": 93.1},   # workers per GPU -> runs/hour
     "peak_memory_gib": {"1": 9.8, "2": 19.5, "4": 39.0, "8": 78.1},  # optional: N workers' summed peak
     "memory_gib": 139.8}                # optional: the card's memory, where torch cannot say

``peak_memory_gib`` may also be one number, one run's peak; a worker's peak is the largest
``peak / N`` measured.  Other keys (the script's own ``workers_per_gpu``, which the same rule
gives, the preset, a date) are ignored.  Workers start by
``forkserver`` (never a fork of a threaded parent, nor of one that initialised CUDA), once per
process and device, and are reused by later calls.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm.auto import tqdm

_pools: dict[str | None, tuple[ProcessPoolExecutor, int]] = {}  # device id (None: CPU, or unpinned) -> (pool, size)
_busy = False  # in a worker: whether it is running a job
_ENV_PREFIX = "HANDFUSE_"  # the folders a job writes to travel with it: a worker's own environment may be stale

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "workers.json"
FALLBACK_PER_GPU = 2  # without a measurement of this GPU (module docstring)
NEAR_BEST = 0.95  # a worker count within 5 % of the best measured throughput is as good
MEMORY_SHARE = 0.9  # of a card's memory, what the workers' runs may use together


def _positive_int(name: str, text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {text!r}")
    return n


def workers(device: str | torch.device = "cpu") -> int:
    """How many runs go side by side: on CPU ``HANDFUSE_WORKERS``, else the machine's cores; on CUDA
    :func:`workers_per_gpu` times the GPUs (:func:`devices`)."""
    if torch.device(device).type == "cuda":
        gpus = devices(device)
        return workers_per_gpu(len(gpus)) * len(gpus)
    env = os.environ.get("HANDFUSE_WORKERS")
    return (os.cpu_count() or 1) if env is None else _positive_int("HANDFUSE_WORKERS", env)


def devices(device: str | torch.device = "cpu") -> list[str | None]:
    """The devices runs on ``device`` go to, as what a worker's ``CUDA_VISIBLE_DEVICES`` is set to:
    ``[None]`` on CPU and for ``cuda:N`` (unpinned: the device string says which GPU); for ``cuda``
    every visible GPU (the entries of this process's ``CUDA_VISIBLE_DEVICES``, else ``0..count-1``)."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return [None]
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else [str(i) for i in range(count)]
    return ids[:count] or [None]


def slots(devices: list[str | None], per_device: int) -> list[str | None]:
    """One entry per worker, the device it is pinned to: ``per_device`` workers on each device,
    interleaved (``[a, b, a, b]``), so that the first jobs spread over the devices."""
    return [d for _ in range(per_device) for d in devices]


def per_gpu_rule(measured: dict | None, device_name: str, memory_gib: float | None, cores: int, gpus: int,
                 source: str = "the measurement") -> int:
    """Workers per GPU from a measurement (the schema of the module docstring; ``None`` or another
    GPU's: :data:`FALLBACK_PER_GPU`), bounded by memory and by ``cores // gpus``."""
    n, peak = FALLBACK_PER_GPU, None
    if measured is not None and measured.get("device") == device_name:
        rates = measured.get("runs_per_hour")
        try:
            rates = {_positive_int("workers", k): float(v) for k, v in rates.items()}
            assert rates and all(v > 0 for v in rates.values())
        except (AttributeError, AssertionError, TypeError, ValueError):
            raise ValueError(f"{source}: runs_per_hour must map worker counts ('1', '2', ...) to positive runs per "
                             f"hour, got {rates!r}") from None
        best = max(rates.values())
        n = min(k for k, v in rates.items() if v >= NEAR_BEST * best)
        peak = measured.get("peak_memory_gib")
        if isinstance(peak, dict):  # N workers' summed peak, by N
            peak = max((float(v) / _positive_int("workers", k) for k, v in peak.items() if v), default=None)
        memory_gib = memory_gib or measured.get("memory_gib")
    if peak and memory_gib:
        n = min(n, max(1, math.floor(MEMORY_SHARE * memory_gib / peak)))
    return max(1, min(n, cores // max(gpus, 1)))


def workers_per_gpu(gpus: int = 1, measured: Path = MEASURED) -> int:
    """Runs side by side on each GPU: ``HANDFUSE_WORKERS_PER_GPU``, else :func:`per_gpu_rule` of the
    measurement file and this machine (its first GPU's name and memory, its cores)."""
    env = os.environ.get("HANDFUSE_WORKERS_PER_GPU")
    if env is not None:
        return _positive_int("HANDFUSE_WORKERS_PER_GPU", env)
    found = json.loads(measured.read_text()) if measured.is_file() else None
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    return per_gpu_rule(found, name, memory, os.cpu_count() or 1, gpus, str(measured))


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


def _init(device_id: str | None = None) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, _interrupted)
    if device_id is not None:  # before anything here touches CUDA: this worker sees one GPU, as "cuda"
        if torch.cuda.is_initialized():
            raise RuntimeError("a GPU worker found CUDA initialised before it was pinned to its device")
        os.environ["CUDA_VISIBLE_DEVICES"] = device_id


def _interrupted(signum, frame) -> None:
    """SIGINT in a worker.  Jupyter interrupts a kernel's whole process group, workers included, both
    when a user interrupts a cell and when it shuts the kernel down (papermill does, after the last
    cell).  A job stops with KeyboardInterrupt, which goes back to :func:`map_jobs`'s caller; an idle
    worker carries on waiting (it would otherwise die printing a traceback, and break the pool)."""
    if _busy:
        raise KeyboardInterrupt


def _pool_of(device_id: str | None, n: int) -> ProcessPoolExecutor:
    """The ``n`` workers pinned to ``device_id`` (None: unpinned), started now unless already running."""
    if device_id in _pools and _pools[device_id][1] != n:
        _pools.pop(device_id)[0].shutdown(wait=True, cancel_futures=True)
    if device_id not in _pools:
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(["handfuse.grid"])
        _pools[device_id] = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init, initargs=(device_id,)), n
    return _pools[device_id][0]


def shutdown() -> None:
    """Stop the workers (they are started again by the next :func:`map_jobs`)."""
    while _pools:
        _pools.popitem()[1][0].shutdown(wait=True, cancel_futures=True)


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
             after: list | None = None, device: str | torch.device = "cpu", placed: list | None = None) -> list:
    """``fn(job)`` for every job, side by side in :func:`workers` processes; results in job order.

    ``after[i]``, if given, holds the indices of the jobs that job ``i`` needs finished first
    (a pre-training before the fine-tunings that start from it); they must come before ``i``.
    A worker that frees up takes the first job, in list order, whose needs are met, so list
    order is priority order.  ``device`` says whose workers run them (``"cuda"``: every GPU's, see
    the module docstring); ``placed``, if given, receives each job's device (:func:`devices`), in
    job order.  ``fn`` must be a module-level function and the jobs picklable.
    The first failure stops the rest and is raised as a RuntimeError naming its job
    (``describe(job)``), with the worker's error chained."""
    if not jobs:
        return []
    needs = [set(after[i]) if after else set() for i in range(len(jobs))]
    for i, need in enumerate(needs):
        if any(not 0 <= j < i for j in need):
            raise ValueError(f"map_jobs: job {i} ({describe(jobs[i])}) must come after the jobs it needs: {sorted(need)}")
    where = devices(device)
    cuda = torch.device(device).type == "cuda"
    per = workers_per_gpu(len(where)) if cuda else workers()
    slot = slots(where, per)[: len(jobs)]
    n = len(slot)
    if placed is not None:
        placed[:] = [None] * len(jobs)
    if n <= 1:
        if placed is not None:
            placed[:] = [slot[0]] * len(jobs)
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="run", disable=not progress)]
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    pools = {d: _pool_of(d, slot.count(d)) for d in dict.fromkeys(slot)}
    idle = {d: slot.count(d) for d in pools}
    out, waiting, running = [None] * len(jobs), list(range(len(jobs))), {}
    side = f"{per} per GPU on {len(pools)} GPU(s)" if cuda else f"{n} side by side"
    with tqdm(total=len(jobs), desc=f"{desc} ({side})", unit="run", disable=not progress) as bar:
        while waiting or running:
            for i in [i for i in waiting if not needs[i]][: sum(idle.values())]:  # one job per idle worker
                d = max(idle, key=idle.get)  # the device with the most idle workers (the first, on a tie)
                idle[d] -= 1
                waiting.remove(i)
                running[pools[d].submit(_call, fn, env, jobs[i])] = i, d
                if placed is not None:
                    placed[i] = d
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                i, d = running.pop(f)
                idle[d] += 1
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
