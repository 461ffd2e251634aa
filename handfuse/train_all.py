"""Train every run a reproduction needs as independent jobs, on this machine or on a Slurm cluster.

``python -m handfuse train-all --preset cpu --executor local|slurm`` trains :func:`handfuse.plan.plan`
(notebooks 01-04 and 06: their pre-trainings, then the fine-tunings that start from them), so that the
notebooks then only load finished runs: runs are keyed on disk by their configuration and the code
(:mod:`handfuse.runs`), and a run already finished there is skipped, so a second call trains nothing.

* ``local``: :func:`handfuse.pool.map_jobs`, one single-threaded worker per core on CPU, or
  :func:`~handfuse.pool.workers_per_gpu` workers on every visible GPU; a fine-tuning starts as soon as
  the pre-trainings it needs are done.
* ``slurm``: one Slurm job per run through ``submitit``, stage by stage: the fine-tunings are
  submitted once every pre-training finished.  Each job's log lands in ``--slurm-logs`` (default
  ``<runs>/<preset>/train-all-logs``); a failed job stops the command with an error naming its run
  and its log.  Tests drive this path with submitit's local executor (``cluster="local"``).

The data and its crop cache are built here once, before any job starts; the depth-centred test
crops, by the first job scored on them, once the localiser they come from is trained (the other
jobs wait for them).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import get_cache
from .config import get_preset
from .finetune import DEPTH_LOCALISER_SEED
from .fpha import FPHA
from .grid import describe, grid_jobs, job, pretrain_jobs
from .paths import ensure_synthetic
from .plan import NOTEBOOKS, NotebookRuns, plan
from .pool import map_jobs
from .runs import models_dir

CENTRES = ["gt", "depth"]  # every trained run is scored on both, as the notebooks' grids do
EXECUTORS = ("local", "slurm")


def train_all(preset: str, executor: str = "local", data_root: str | Path | None = None, seeds: int | None = None,
              seed: int | None = None, device: str = "cpu", notebooks: tuple[str, ...] = NOTEBOOKS,
              slurm: dict | None = None, logs: str | Path | None = None, runs: dict[str, NotebookRuns] | None = None,
              cluster: str = "slurm", dry_run: bool = False, progress: bool = True) -> list[str]:
    """Train the plan (``runs``, default :func:`handfuse.plan.plan` of ``notebooks``) with ``executor``;
    ``slurm`` holds ``partition``, ``time`` (minutes) and ``gpus_per_node``.  Returns what it trained
    (or, with ``dry_run``, would train), one line per job."""
    P = get_preset(preset)
    fpha = FPHA(Path(data_root) if data_root is not None else ensure_synthetic(preset))
    cache = get_cache(fpha, P.preprocess, progress=progress)
    runs = runs if runs is not None else plan(P, seeds, seed, int(np.median(cache.lengths)), notebooks)
    tasks, after = jobs_of(runs, fpha, P, device, cache)
    lines = [describe(t) for t in tasks]
    where = models_dir(P)
    if not tasks or dry_run:
        tqdm.write(f"train-all ({preset}): {len(tasks)} job(s) to run" + (" (dry run)" if dry_run else "")
                   + f"; runs in {where}")
        return lines
    if executor == "local":
        map_jobs(job, tasks, describe=describe, desc="train-all", progress=progress, after=after, device=device)
    else:
        logs = Path(logs) if logs is not None else where.parent / "train-all-logs"
        _submit_in_stages(tasks, after, logs, device, slurm or {}, cluster)
    tqdm.write(f"train-all ({preset}): {len(tasks)} job(s) done; runs in {where}")
    return lines


def jobs_of(runs: dict[str, NotebookRuns], fpha: FPHA, preset, device: str, cache) -> tuple[list[dict], list[list[int]]]:
    """The worker jobs of a plan not finished on disk (:func:`handfuse.grid.job`), pre-trainings
    first, with each job's needs (indices of the jobs it waits for).  The localiser that the
    depth-centred test crops come from goes first when it is not trained yet (the longest job), and
    every fine-tuning waits for it: each is scored on those crops, and a worker that found no
    localiser would train one of its own."""
    specs = {k: v for r in runs.values() for k, v in r.specs.items()}
    tasks, after, _ = grid_jobs(specs, [(k, s) for k, v in specs.items() for s in v["seeds"]], fpha, preset, CENTRES,
                                device, cache)
    # the depth-centred crops' localiser, on CPU as CentredTestSets trains it
    depth = pretrain_jobs(fpha, preset, [("localiser", {"seed": DEPTH_LOCALISER_SEED})], "cpu") if specs else []
    requests = [req for r in runs.values() for req in r.pretrain]
    have = {t["pretrain"]["run"] for t in tasks if "pretrain" in t} | {j["run"] for j in depth}
    extra = [{"pretrain": j} for j in depth + [j for j in pretrain_jobs(fpha, preset, requests, device) if j["run"] not in have]]
    wait = {0} if depth else set()  # the depth localiser's job, the first of `extra`
    return extra + tasks, [[]] * len(extra) + [
        sorted({i + len(extra) for i in need} | (wait if "run" in t else set())) for t, need in zip(tasks, after)]


def stages(after: list[list[int]]) -> list[int]:
    """Each job's stage: 0 without needs, else one more than the latest stage it needs."""
    out: list[int] = []
    for need in after:
        out.append(1 + max(out[i] for i in need) if need else 0)
    return out


def _submitted(env: dict, task: dict):
    """One job in a Slurm (or submitit local) process: the caller's ``HANDFUSE_*`` folders, one CPU thread."""
    os.environ.update(env)
    torch.set_num_threads(1)
    return job(task)


def _submit_in_stages(tasks: list[dict], after: list[list[int]], logs: Path, device: str, slurm: dict,
                      cluster: str) -> None:
    """Submit the jobs stage by stage through submitit, each stage once the one before finished."""
    import submitit

    executor = submitit.AutoExecutor(folder=logs / "%j", cluster=cluster)
    gpus = slurm.get("gpus_per_node")
    executor.update_parameters(name="handfuse-train-all", timeout_min=int(slurm.get("time") or 240), cpus_per_task=1,
                               gpus_per_node=(1 if device.startswith("cuda") else 0) if gpus is None else gpus,
                               **({"slurm_partition": slurm["partition"]} if slurm.get("partition") else {}))
    env = {k: v for k, v in os.environ.items() if k.startswith("HANDFUSE_")}
    level = stages(after)
    for stage in range(max(level) + 1):
        chosen = [t for t, s in zip(tasks, level) if s == stage]
        submitted = [executor.submit(_submitted, env, t) for t in chosen]
        failed = []
        for t, j in tqdm(list(zip(chosen, submitted)), desc=f"train-all, stage {stage + 1} (submitit)", unit="run"):
            try:
                j.result()
            except Exception as e:  # noqa: BLE001  submitit raises its own kinds; every one is this job's failure
                failed.append((t, j, e))
        if failed:
            t, j, e = failed[0]
            raise RuntimeError(f"{describe(t)}: failed as {cluster} job {j.job_id} ({type(e).__name__}); its log: "
                               f"{j.paths.stderr}" + (f" ({len(failed) - 1} more failed)" if len(failed) > 1 else ""))
