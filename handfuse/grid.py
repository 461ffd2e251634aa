"""Many runs at once: what a notebook cell needs, trained side by side and loaded here.

:func:`run_many` takes named specs (a method, its options, which models, which seeds) and returns
their :class:`~handfuse.records.RunRecord` per name.  With more than one worker (:mod:`handfuse.pool`:
one per core on CPU, several per GPU on every visible GPU on CUDA), everything not yet on disk goes
to the workers: the pre-trainings first, then every fine-tuning once its pre-trained models are
done, and the scoring of every untrained chain last (:func:`grid_jobs`).  :func:`pretrain_many`
does the same for pre-trainings alone.  Every run and score on CPU is single-threaded wherever it
runs, and a run on a GPU worker is seeded by its own seed and alone in its process, so the records
are those of running everything here.

A worker rebuilds what it needs from the job (the data root, the preset); data it could not
rebuild the same way (a root opened with ``keep_going``, a non-standard test set), and methods or
models registered only in this process, run here instead.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import CropCache, get_cache
from .config import Preset
from .datasets import SequenceDataset
from .finetune import finetune_run, pretrained, pretrained_requests, resolved_config, run, test_sets
from .fpha import FPHA
from .methods import BUILTIN
from .models.registry import DEFAULT_HAR, DEFAULT_HPE, HARS, HPES
from .pool import map_jobs, workers
from .records import RunRecord
from .runs import finished, same_frames
from .standalone import pretrain, run_of
from .train import FitResult

_BUILTIN_MODELS = (frozenset(HPES), frozenset(HARS))  # what a fresh worker process knows by name
SPEC_FIELDS = ("method", "trained", "hpe_model", "har_model", "seeds")  # a spec's fields beyond FusionConfig options


def run_seeds(name: str, fpha: FPHA, preset: Preset, seeds: list[int], tests: dict[str, SequenceDataset],
              trained: bool = True, device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
              keep_model: bool = False, hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR,
              **options) -> list[RunRecord]:
    """One spec's records, one per seed (see :func:`run_many`)."""
    spec = {"method": name, "trained": trained, "hpe_model": hpe_model, "har_model": har_model, **options}
    return run_many({"runs": spec}, fpha, preset, seeds, tests, device, cache, progress, keep_model)["runs"]


def run_many(specs: dict, fpha: FPHA, preset: Preset, seeds: list[int], tests: dict[str, SequenceDataset],
             device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
             keep_model: bool | Iterable = False, **common) -> dict[object, list[RunRecord]]:
    """Several runs: ``specs`` maps a name to one configuration, a dict with ``method`` (required),
    ``trained`` (default True), ``hpe_model``, ``har_model``, ``seeds`` (default: ``seeds``) and
    FusionConfig options; ``common`` options apply to every spec (a spec's own win).  Returns, per
    name, one record per seed, with the live models of the specs named in ``keep_model`` (True:
    every spec).  Hand over every run of a notebook cell in one call: the last round may find fewer
    runs than workers, and a single-threaded run alone leaves a core idle."""
    specs = resolve_specs(specs, seeds, **common)
    keep = set(specs) if keep_model is True else set(keep_model or ())
    jobs = [(k, seed) for k, v in specs.items() for seed in v["seeds"]]
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    pooled = (workers(device) > 1 and len(jobs) > 1
              and standard_tests(fpha, preset, cache, tests) and all(_known_to_workers(v) for v in specs.values()))
    done = _run_in_workers(specs, jobs, fpha, preset, tests, device, cache, progress) if pooled else {}
    out = {k: [] for k in specs}
    for k, seed in tqdm(jobs, desc="loading runs" if pooled else "fusion runs", unit="run", disable=not progress):
        if (k, seed) in done and k not in keep:
            out[k].append(done[(k, seed)])
            continue
        name, trained, hpe_model, har_model, options = split_spec(specs[k])
        record = run(name, fpha, preset, seed, tests, trained, device, cache, progress and not pooled, hpe_model,
                     har_model, **options)
        out[k].append(record if k in keep else record.without_model())
    return out


def resolve_specs(specs: dict, seeds: list[int], **common) -> dict:
    """``specs`` with every field set: the defaults, then ``common``, then the spec's own (see :func:`run_many`)."""
    specs = {k: {"trained": True, "hpe_model": DEFAULT_HPE, "har_model": DEFAULT_HAR, "seeds": list(seeds), **common, **v}
             for k, v in specs.items()}
    for k, v in specs.items():
        if "method" not in v:
            raise ValueError(f"run_many: spec {k!r} names no method")
    return specs


def _run_in_workers(specs: dict, jobs: list, fpha: FPHA, preset: Preset, tests: dict, device: str,
                    cache: CropCache, progress: bool) -> dict:
    """Train and score what is not on disk yet in the workers; their records by (spec name, seed)."""
    tasks, after, keys = grid_jobs(specs, jobs, fpha, preset, list(tests), device, cache)
    results = map_jobs(job, tasks, describe=describe, desc="runs", progress=progress, after=after, device=device)
    return dict(zip(keys, results[len(tasks) - len(keys):]))


def grid_jobs(specs: dict, jobs: list, fpha: FPHA, preset: Preset, centres: list[str], device: str,
              cache: CropCache) -> tuple[list[dict], list[list[int]], list[tuple]]:
    """The worker jobs (for :func:`job`) of the runs ``jobs`` ((spec name, seed) pairs of the resolved
    ``specs``) not finished on disk: the pre-trainings they need first, then one job per distinct
    run, each scored on the test sets ``centres``.  Returns the jobs, each job's needs (indices, for
    :func:`handfuse.pool.map_jobs`' ``after``) and the (spec name, seed) of each run job, in order."""
    pre, todo = {}, {}  # pre-training jobs (one per run folder); one job per distinct run (two specs may name one)
    for k, seed in jobs:
        needs = _pretraining_needs(fpha, preset, specs[k], seed, device, pre)
        if needs or not _finished(fpha, preset, specs[k], seed, device, cache):  # finished fine-tunings: only loaded
            todo.setdefault((_run_key(preset, specs[k]), seed), (k, seed, needs))
    # pre-trainings first; then fine-tunings, each once its pre-trained models are done; the short scorings
    # of untrained chains last: they fill the last round's idle workers
    todo = sorted(todo.values(), key=lambda job: not specs[job[0]]["trained"])
    context = {"root": str(fpha.root), "intrinsics": fpha.intrinsics, "preset": preset, "device": device}
    tasks = [{"pretrain": p} for p in pre.values()] + [
        {"run": {**context, "centres": list(centres), "seed": seed, "spec": _run_spec(specs[k])}} for k, seed, _ in todo]
    return tasks, [[]] * len(pre) + [sorted(needs) for _, _, needs in todo], [(k, seed) for k, seed, _ in todo]


def _known_to_workers(spec: dict) -> bool:
    """Whether a fresh worker process knows the spec's method and models by name."""
    return spec["method"] in BUILTIN and spec["hpe_model"] in _BUILTIN_MODELS[0] and spec["har_model"] in _BUILTIN_MODELS[1]


def _run_key(preset: Preset, spec: dict) -> str:
    """What makes a spec's run: its method, models and resolved configuration (two specs spelling
    the same configuration differently name one run, one run folder)."""
    name, trained, hpe_model, har_model, options = split_spec(spec)
    cfg = asdict(resolved_config(name, preset, options))
    return json.dumps([name, trained, hpe_model, har_model, cfg], sort_keys=True, default=str)


def _run_spec(spec: dict) -> dict:
    """A spec without its seeds: what one run of it is, whatever the seed."""
    return {f: v for f, v in spec.items() if f != "seeds"}


def split_spec(spec: dict) -> tuple[str, bool, str, str, dict]:
    """(method, trained, hpe_model, har_model, FusionConfig options) of a spec."""
    return (*(spec[f] for f in SPEC_FIELDS[:4]), {f: v for f, v in spec.items() if f not in SPEC_FIELDS})


def _pretraining_needs(fpha: FPHA, preset: Preset, spec: dict, seed: int, device: str, pre: dict) -> set[int]:
    """The indices, in ``pre`` (run folder -> pre-training job, added to here), of the pre-trainings a
    spec's run of ``seed`` waits for: those of its pre-trained models not finished on disk."""
    name, _, hpe_model, har_model, options = split_spec(spec)
    cfg = resolved_config(name, preset, options)
    jobs = pretrain_jobs(fpha, preset, pretrained_requests(seed, cfg.attention, cfg.film, hpe_model, har_model,
                                                               cfg.hpe_feed), device)
    for j in jobs:
        pre.setdefault(j["run"], j)
    return {list(pre).index(j["run"]) for j in jobs}


def _finished(fpha: FPHA, preset: Preset, spec: dict, seed: int, device: str, cache: CropCache) -> bool:
    """Whether a spec's run of ``seed`` is a fine-tuning finished on disk (its pre-trained models are)."""
    name, trained, hpe_model, har_model, options = split_spec(spec)
    if not trained:
        return False
    cfg = resolved_config(name, preset, options)
    models = pretrained(fpha, preset, seed, cfg.attention, cfg.film, device, cache, False, hpe_model, har_model,
                        cfg.hpe_feed)
    return finished(finetune_run(name, models, fpha, preset, cfg, seed, device)[0])


def standard_tests(fpha: FPHA, preset: Preset, cache: CropCache, tests: dict[str, SequenceDataset]) -> bool:
    """Whether a worker can rebuild ``tests`` and the training data itself: the standard test sets
    (a subset of :func:`handfuse.finetune.test_sets`' centres) of the preset's own crop cache."""
    if not reopenable(fpha, preset, cache):
        return False
    if not set(tests) <= {"gt", "depth"}:
        return False
    standard = test_sets(fpha, preset, cache, progress=False)
    return all(same_frames(d, standard[c]) for c, d in tests.items())


# ----------------------------------------------------------------------------- pre-training alone


def pretrain_many(fpha: FPHA, preset: Preset, requests: list[tuple[str, dict]], device: str = "cpu",
                  cache: CropCache | None = None, progress: bool = True) -> list[tuple[nn.Module, FitResult]]:
    """Several pre-trainings: ``requests`` are ``("hpe", kwargs)``, ``("har", kwargs)`` or ``("localiser",
    kwargs)``, the kwargs those of :func:`handfuse.standalone.pretrain_hpe`,
    :func:`~handfuse.standalone.pretrain_har` or :func:`~handfuse.standalone.pretrain_localiser`.
    The unfinished ones run side by side, one per worker (:func:`handfuse.pool.workers`: on CPU or
    on the GPUs); then each is loaded here, in order."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    # on CPU always (one worker: the jobs run here, through the workers' code); on CUDA with more than one
    # worker; where a worker could not reopen the data, or knows not the models, each trains here below
    pooled = torch.device(device).type == "cpu" or workers(device) > 1
    known = all(kind == "localiser" or kw.get("model", DEFAULT_HPE if kind == "hpe" else DEFAULT_HAR)
                in _BUILTIN_MODELS[kind == "har"] for kind, kw in requests)
    jobs = pretrain_jobs(fpha, preset, requests, device) if pooled and known and reopenable(fpha, preset, cache) else []
    map_jobs(job, [{"pretrain": j} for j in jobs], describe=describe, desc="pre-training", progress=progress,
             device=device)
    return [pretrain(fpha, preset, kind, kwargs, device, cache, progress and not jobs) for kind, kwargs in requests]


def pretrain_jobs(fpha: FPHA, preset: Preset, requests: list[tuple[str, dict]], device: str) -> list[dict]:
    """The worker jobs of the requests not finished on disk, one per run folder."""
    jobs = {}
    for kind, kwargs in requests:
        folder = run_of(fpha, preset, kind, kwargs, device)
        if not finished(folder):
            jobs.setdefault(folder, {"root": str(fpha.root), "intrinsics": fpha.intrinsics, "preset": preset,
                                     "device": device, "kind": kind, "kwargs": dict(kwargs), "run": str(folder)})
    return list(jobs.values())


def reopenable(fpha: FPHA, preset: Preset, cache: CropCache) -> bool:
    """Whether a worker process reopening ``fpha``'s root (:func:`opened`) gets the same data: the
    root opened without ``keep_going`` (a worker's FPHA would refuse it), and ``cache`` the preset's own."""
    if getattr(fpha, "missing", None):
        return False
    return cache.path.resolve() == get_cache(fpha, preset.preprocess, progress=False).path.resolve()


# ----------------------------------------------------------------------------- in a worker process


_opened: dict = {}  # (root, intrinsics, preset) -> (FPHA, crop cache), opened once per process
_tests: dict = {}  # (root, intrinsics, preset) -> the test sets, built once per process


def opened(root: str, intrinsics, preset: Preset) -> tuple[FPHA, CropCache]:
    """The dataset and the preset's crop cache, opened once per process (a worker's)."""
    key = (root, repr(intrinsics), repr(preset))
    if key not in _opened:
        fpha = FPHA(root, intrinsics)
        _opened[key] = fpha, get_cache(fpha, preset.preprocess, progress=False)
    return _opened[key]


def job(task: dict) -> str | RunRecord:
    """One job in a worker process: a pre-training (its run folder is returned), or a run, trained
    and scored, written to disk (its record is returned, without the live model)."""
    if "pretrain" in task:
        p = task["pretrain"]
        fpha, cache = opened(p["root"], p["intrinsics"], p["preset"])
        return pretrain(fpha, p["preset"], p["kind"], p["kwargs"], p["device"], cache, False)[1].run_dir
    r = task["run"]
    fpha, cache = opened(r["root"], r["intrinsics"], r["preset"])
    key = (r["root"], repr(r["intrinsics"]), repr(r["preset"]))
    if key not in _tests:
        _tests[key] = test_sets(fpha, r["preset"], cache, progress=False)
    name, trained, hpe_model, har_model, options = split_spec(r["spec"])
    return run(name, fpha, r["preset"], r["seed"], {c: _tests[key][c] for c in r["centres"]}, trained, r["device"],
               cache, False, hpe_model, har_model, **options).without_model()


def describe(task: dict) -> str:
    """What a worker job is, in words: the name its failure carries."""
    if "pretrain" in task:
        return f"pre-training {task['pretrain']['kind']} {task['pretrain']['kwargs']}"
    return f"fusion run {task['run']['spec']}, seed {task['run']['seed']}"
