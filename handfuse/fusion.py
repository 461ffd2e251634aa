"""Running the fusion methods: pre-trained starting points, fine-tuning through ``fit``, honest evaluation.

What the notebooks 02-04 call.  For one method, one configuration and one seed:

1. :func:`pretrained` loads (or trains, through :mod:`handfuse.standalone`) the plain
   HPE, the FiLM-conditioned HPE and the HAR of that seed;
2. :func:`finetune` builds the method (:func:`handfuse.methods.build`) and fine-tunes it
   with ``handfuse.train.fit`` on the training side of the action split, selecting the
   epoch on the validation split's joint loss; the run folder is keyed by the method's
   resolved configuration, so a finished run is loaded, not trained again;
3. :func:`evaluate` scores it on the test split once per crop centre: ``"gt"`` (the
   ground-truth middle MCP, as the original) and ``"depth"`` (found from depth alone).
   The scores are stored beside the runs (``models/scores/``), keyed by the weights (the
   fingerprint of the run's ``result.json``, or of the pre-trained runs' for an untrained
   chain), the method's configuration and the test frames, so a notebook that reuses a
   finished run (``03`` reuses ``02``'s baselines, ``06`` the study's runs) loads its
   scores instead of evaluating the same weights on the same frames again.

:func:`run` does all three and returns a JSON-ready record; :func:`aggregate` turns
the records of several seeds into means and 95 % intervals.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cache import CropCache, get_cache
from .config import Preset
from .datasets import SequenceDataset, collate_sequences
from .fpha import FPHA
from .methods import FusionConfig, build, evaluate_sequences, method_config
from .metrics import mean_ci95
from .models.registry import DEFAULT_HAR, DEFAULT_HPE
from .pool import map_jobs, one_thread, thread_record, workers
from . import standalone
from .standalone import models_dir, pretrain, splits
from .tasks import sequence_batches
from .train import RESULT, FitResult, TrainConfig, finished, fit, load_checkpoint, run_digest, save_checkpoint

EVAL_BATCH = 64  # sequences per evaluation batch: feedback's steps batch across them


@dataclass
class Pretrained:
    """The starting points of one seed: the HPE for unconditioned use (``hpe``: the baseline, the
    ensemble's first pass), the FiLM-conditioned one (``hpe_film``: feedback, the ensemble's second
    pass), the HAR, and their fit results (``results``: ``hpe``, ``hpe_film``, ``har``), with the
    registered names of the two models (:mod:`handfuse.models.registry`)."""

    hpe: nn.Module
    hpe_film: nn.Module
    har: nn.Module
    results: dict[str, FitResult]
    hpe_model: str = DEFAULT_HPE
    har_model: str = DEFAULT_HAR

    @property
    def pair(self) -> str:
        """``""`` for the default pair (DeepPrior++ and the LSTM), else ``"<hpe>-<har>"``: run names carry it."""
        return pair_name(self.hpe_model, self.har_model)


def pair_name(hpe_model: str, har_model: str) -> str:
    """``""`` for the default pair, else ``"<hpe>-<har>"`` (e.g. ``"resnet-transformer"``)."""
    return "" if (hpe_model, har_model) == (DEFAULT_HPE, DEFAULT_HAR) else f"{hpe_model}-{har_model}"


def pretrained(fpha: FPHA, preset: Preset, seed: int, attention: bool = False, film: str = "both",
               device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
               hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR) -> Pretrained:
    """The pre-trained models every method of one seed starts from: the pose estimator and the
    action recogniser registered as ``hpe_model`` and ``har_model``.

    One HPE is pre-trained per seed: the FiLM-conditioned one (placement ``film``), fed w_eq.  Fed
    w_eq, each FiLM is a constant per-channel affine, so this *is* a plain DeepPrior++ HPE; it serves
    as both ``hpe`` and ``hpe_film``.  Every method thus starts from the same weights, and what
    differs between them is only what they add (the fed action, the second pass), not a second
    pre-training run's luck; it also halves the pre-training time.  ``01_standalone`` pre-trains a
    plain HPE beside it and shows that the two reach the same error."""
    (hpe_film, r_film), (har, r_har) = (pretrain(fpha, preset, kind, kwargs, device, cache, progress) for kind, kwargs
                                        in pretrained_requests(seed, attention, film, hpe_model, har_model))
    return Pretrained(hpe_film, hpe_film, har, {"hpe": r_film, "hpe_film": r_film, "har": r_har}, hpe_model, har_model)


def pretrained_requests(seed: int, attention: bool, film: str, hpe_model: str = DEFAULT_HPE,
                        har_model: str = DEFAULT_HAR) -> list[tuple[str, dict]]:
    """What :func:`pretrained` pre-trains, as :func:`handfuse.standalone.pretrain_many` requests."""
    return [("hpe", {"film": film, "seed": seed, "model": hpe_model}),
            ("har", {"attention": attention, "seed": seed, "model": har_model})]


@dataclass
class FusionTask:
    """A ``fit`` task over whole sequences of the crop cache: the method's joint loss; selection
    on the validation split's joint loss (the training objective), also reporting error and accuracy."""

    data: dict[str, SequenceDataset]
    metric: str = "loss"
    higher_is_better: bool = False
    eval_batch: int = EVAL_BATCH
    scored: dict = field(default_factory=dict)  # split -> the full scores of its last evaluation

    def batches(self, split, epoch, cfg):
        return sequence_batches(self.data[split], epoch, cfg, salt=2)

    def loss(self, model, batch):
        return model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)

    def evaluate(self, model, split, cfg):
        r = self.scored[split] = evaluate_sequences(model, self.data[split], self.eval_batch)
        return {k: r[k] for k in ("loss", "error_mm", "accuracy")}


def run_name(name: str, config: dict, train: TrainConfig, seed: int, pair: str = "") -> str:
    """``fuse-<method>-<8 hex>-seed<seed>``: one folder per resolved configuration (method options,
    training settings and pre-trained models; see :func:`handfuse.train.run_digest`).  A pair of
    models other than the default is named too: ``fuse-<method>-<hpe>-<har>-<8 hex>-seed<seed>``."""
    method = f"{name}-{pair}" if pair else name
    return f"fuse-{method}-{run_digest({**config, 'train': asdict(train)})}-seed{seed}"


def _build(name: str, models: Pretrained, preset: Preset, cfg: FusionConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # what cfg.film_response draws depends on the seed only
    return build(name, models, preset.preprocess.cube_mm / 2, cfg)


def finetune(name: str, models: Pretrained, fpha: FPHA, preset: Preset, cfg: FusionConfig, seed: int,
             device: str = "cpu", cache: CropCache | None = None, root: str | Path | None = None,
             progress: bool = True, scored: dict | None = None) -> tuple[nn.Module, FitResult]:
    """Method ``name`` built from ``models`` and fine-tuned end to end (``preset.train_fuse``).

    ``scored``, if given, receives the full scores (:func:`evaluate_sequences`) of the test split
    when this call trained the run and so scored it; a finished run loaded from disk leaves it empty."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    model = _build(name, models, preset, cfg, seed)
    data = {k: SequenceDataset(cache, refs) for k, refs in splits(fpha, preset, seed).items()}
    run, config, train_cfg = _run_folder(name, models, fpha, preset, cfg, seed, device, root)
    task = FusionTask(data)
    result = fit(model, task, train_cfg, run, config, progress=progress)
    if scored is not None and "test" in task.scored:
        scored[task.data["test"]] = task.scored["test"]
    return model, result


def _run_folder(name: str, models: Pretrained, fpha: FPHA, preset: Preset, cfg: FusionConfig, seed: int,
                device: str = "cpu", root: str | Path | None = None) -> tuple[Path, dict, TrainConfig]:
    """Where a fine-tuning run lives, with its resolved configuration and training settings."""
    train_cfg = replace(preset.train_fuse, seed=seed, device=device)
    config = {"data": str(fpha.root.resolve()), "preset": preset.name, "method": name, "fusion": asdict(cfg),
              "pretrained": {k: r.config for k, r in models.results.items()}, **thread_record(device)}
    return models_dir(preset, root) / run_name(name, config, train_cfg, seed, models.pair), config, train_cfg


def test_sets(fpha: FPHA, preset: Preset, cache: CropCache | None = None, progress: bool = True
              ) -> dict[str, SequenceDataset]:
    """The test split cropped around each kind of centre: ``gt`` and ``depth`` (built once, cached)."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    depth = get_cache(fpha, replace(preset.preprocess, centre="depth"), sequences=fpha.test, progress=progress)
    return {"gt": SequenceDataset(cache, fpha.test), "depth": SequenceDataset(depth, fpha.test)}


def evaluate(model: nn.Module, tests: dict[str, SequenceDataset], scored: dict | None = None,
             store: ScoreStore | None = None) -> dict[str, dict]:
    """Test error (mm), accuracy and per-sequence details of ``model`` for each crop centre.

    ``scored`` maps datasets already scored with these very weights (by :func:`finetune`) to their
    scores; a test set holding the same sequences of the same crops is not scored again.  With a
    ``store``, scores found there are loaded and fresh ones are saved to it.  On CPU it scores on
    one thread, wherever it runs: the last bits of a score can depend on the thread count, and a
    stored score must be the one a fresh evaluation gives."""
    with one_thread(next(model.parameters()).device):
        return _evaluate(model, tests, scored, store)


def _evaluate(model: nn.Module, tests: dict[str, SequenceDataset], scored: dict | None,
              store: ScoreStore | None) -> dict[str, dict]:
    out = {}
    for centre, data in tests.items():
        done = [r for d, r in (scored or {}).items() if _same_frames(d, data)]
        found = store.load(model, data) if store is not None and not done else None
        if found is not None:
            out[centre] = found
            continue
        out[centre] = done[0] if done else evaluate_sequences(model, data, batch_size=EVAL_BATCH)
        if store is not None:
            store.save(model, data, out[centre])
    return out


_SCALARS = ("error_mm", "accuracy", "loss")  # the scalar scores of evaluate_sequences


class ScoreStore:
    """Test scores of one set of weights (``weights``: a fingerprint of where they came from), one
    file per method configuration and test set in ``folder``; written atomically, loaded with
    ``weights_only=True``.  Evaluation is deterministic, so a stored score *is* the evaluation."""

    def __init__(self, folder: Path, weights: str):
        self.folder, self.weights = Path(folder), weights

    def _path(self, model: nn.Module, data: SequenceDataset) -> Path:
        key = {"weights": self.weights, "method": asdict(model.cfg), "frames": _frames_key(data)}
        return self.folder / f"{run_digest(key)}.pt"

    def load(self, model: nn.Module, data: SequenceDataset) -> dict | None:
        path = self._path(model, data)
        if not path.is_file():
            return None
        s = load_checkpoint(path)
        return {**{k: float(s[k]) for k in _SCALARS},
                "logits": s["logits"].numpy(), "labels": s["labels"].numpy(),
                "frame_error_mm": [e.numpy() for e in s["frame_error_mm"]],
                "attention": [None if a is None else a.numpy() for a in s["attention"]]}

    def save(self, model: nn.Module, data: SequenceDataset, scores: dict) -> None:
        path = self._path(model, data)
        if path.is_file():
            return
        save_checkpoint(path, {**{k: float(scores[k]) for k in _SCALARS},
                               "logits": torch.from_numpy(np.asarray(scores["logits"])),
                               "labels": torch.from_numpy(np.asarray(scores["labels"])),
                               "frame_error_mm": [torch.from_numpy(np.asarray(e)) for e in scores["frame_error_mm"]],
                               "attention": [None if a is None else torch.from_numpy(np.asarray(a)) for a in scores["attention"]]})


def _fingerprint(*runs: FitResult) -> str:
    """Where a set of weights came from: the bytes of each run's ``result.json`` (a run trained
    again writes another), or, for a run kept in memory only, the result itself."""
    h = hashlib.sha256()
    for r in runs:
        path = Path(r.run_dir) / RESULT if r.run_dir else None
        h.update(path.read_bytes() if path is not None and path.is_file() else repr(asdict(r)).encode())
    return h.hexdigest()


def _frames_key(data: SequenceDataset) -> dict:
    """What a dataset yields, as a comparable key: the crop cache, the sequences and how they are read."""
    return {"cache": str(data.cache.path.resolve()), "max_len": data.max_len, "with_depth": data.with_depth,
            "sequences": hashlib.sha256(np.ascontiguousarray(data.seq_indices, np.int64).tobytes()).hexdigest()}


def _same_frames(a: SequenceDataset, b: SequenceDataset) -> bool:
    """Whether two datasets yield the same items: the same sequences of the same crop cache."""
    return _frames_key(a) == _frames_key(b)


@contextmanager
def options(model: nn.Module, **fields):
    """Evaluate the same weights with other FusionConfig ``fields`` inside the block, e.g.
    ``eval_feed="w_eq"`` (feedback without feeding) or ``eta=0.1, zeta=0.9`` (another ensemble mix)."""
    old = model.cfg
    model.cfg = replace(old, **fields)
    try:
        yield model
    finally:
        model.cfg = old


def scalars(scores: dict[str, dict]) -> dict[str, dict[str, float]]:
    return {c: {k: float(v[k]) for k in ("error_mm", "accuracy")} for c, v in scores.items()}


def run(name: str, fpha: FPHA, preset: Preset, seed: int, tests: dict[str, SequenceDataset], trained: bool = True,
        device: str = "cpu", cache: CropCache | None = None, progress: bool = True, hpe_model: str = DEFAULT_HPE,
        har_model: str = DEFAULT_HAR, **options) -> dict:
    """One method, one seed: pre-trained models (the registered ``hpe_model`` and ``har_model``),
    fine-tuned (``trained``) or chained as they are, scored on ``tests``.  ``options`` are
    FusionConfig fields.  Returns a JSON-ready record (``model`` holds the method itself, to drop
    before writing).  ``film`` defaults to the preset's."""
    cfg, models = _start(name, fpha, preset, seed, device, cache, progress, hpe_model, har_model, options)
    scored = {}  # the gt test split, if fine-tuning just scored it with the selected weights
    if trained:
        with one_thread(device):  # on CPU one thread, wherever the run runs (see handfuse.pool)
            model, fitted = finetune(name, models, fpha, preset, cfg, seed, device, cache, progress=progress, scored=scored)
        weights = _fingerprint(fitted)
    else:
        model, fitted = _build(name, models, preset, cfg, seed).to(device), None
        weights = (f"untrained, seed {seed}, {thread_record(device)}, "
                   + _fingerprint(*(models.results[k] for k in ("hpe", "hpe_film", "har"))))
    scores = evaluate(model, tests, scored, ScoreStore(models_dir(preset) / "scores", weights))  # one thread too
    standalone = {"hpe_error_mm": models.results["hpe"].test["error_mm"],
                  "hpe_film_error_mm": models.results["hpe_film"].test["error_mm"],
                  "har_accuracy": models.results["har"].test["accuracy"],
                  "hpe_seconds": models.results["hpe_film"].seconds, "har_seconds": models.results["har"].seconds}
    return {"method": name, "seed": seed, "trained": trained, "hpe_model": hpe_model, "har_model": har_model,
            "config": asdict(cfg), "test": scalars(scores),
            "pretrained": standalone,
            "history": fitted.history if fitted else [], "val": fitted.val if fitted else {},
            "train_seconds": fitted.seconds if fitted else 0.0,
            "epoch_seconds": float(np.median([h["seconds"] for h in fitted.history])) if fitted and fitted.history else None,
            "frame_error_mm": {c: [e.tolist() for e in s["frame_error_mm"]] for c, s in scores.items()},
            "model": model}


def _start(name: str, fpha: FPHA, preset: Preset, seed: int, device: str, cache: CropCache | None, progress: bool,
           hpe_model: str, har_model: str, options: dict) -> tuple[FusionConfig, Pretrained]:
    """A run's resolved method configuration (``film`` defaults to the preset's) and its pre-trained
    models, made here if they are not on disk yet."""
    cfg = _method_config(name, preset, options)
    return cfg, pretrained(fpha, preset, seed, cfg.attention, cfg.film, device, cache, progress, hpe_model, har_model)


def _method_config(name: str, preset: Preset, options: dict) -> FusionConfig:
    """A method's resolved configuration: ``film`` defaults to the preset's."""
    return method_config(name, **{"film": preset.film, **options})


def run_seeds(name: str, fpha: FPHA, preset: Preset, seeds: list[int], tests: dict[str, SequenceDataset],
              trained: bool = True, device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
              keep_model: bool = False, hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR,
              **options) -> list[dict]:
    """:func:`run` for each seed (side by side on CPU: see :func:`run_many`); the live models are
    dropped unless ``keep_model``."""
    spec = {"method": name, "trained": trained, "hpe_model": hpe_model, "har_model": har_model, **options}
    return run_many({"runs": spec}, fpha, preset, seeds, tests, device, cache, progress, keep_model)["runs"]


def run_many(specs: dict, fpha: FPHA, preset: Preset, seeds: list[int], tests: dict[str, SequenceDataset],
             device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
             keep_model: bool | Iterable = False, **common) -> dict:
    """Several runs: ``specs`` maps a name to one configuration, a dict with ``method`` (required),
    ``trained`` (default True), ``hpe_model``, ``har_model``, ``seeds`` (default: ``seeds``) and
    FusionConfig options; ``common`` options apply to every spec (a spec's own win).  Returns, per
    name, the records of :func:`run`, one per seed, with the live models of the specs named in
    ``keep_model`` (True: every spec).

    On CPU with more than one worker (:mod:`handfuse.pool`), everything not yet on disk goes to the
    workers, side by side: the pre-trainings first, then every fine-tuning, as soon as its pre-trained
    models are done, and the scoring of every untrained chain last.  The workers' records are returned;
    a run whose live model is wanted (``keep_model``) is loaded here from what its worker wrote (run
    folder, test scores).  Hand over every run of a notebook cell in one call: the last round may
    find fewer runs than workers, and a single-threaded run alone leaves a core idle.  The records
    are the same as those of running everything here: on CPU every run and score is single-threaded
    wherever it runs."""
    specs = {k: {"trained": True, "hpe_model": DEFAULT_HPE, "har_model": DEFAULT_HAR, "seeds": list(seeds), **common, **v}
             for k, v in specs.items()}
    for k, v in specs.items():
        if "method" not in v:
            raise ValueError(f"run_many: spec {k!r} names no method")
    keep = set(specs) if keep_model is True else set(keep_model or ())
    jobs = [(k, seed) for k, v in specs.items() for seed in v["seeds"]]
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    pooled = (torch.device(device).type == "cpu" and workers() > 1 and len(jobs) > 1
              and _standard_tests(fpha, preset, cache, tests))
    if pooled:
        pre, todo = {}, {}  # pre-training jobs (one per run folder); one job per distinct run (two specs may name one)
        for k, seed in jobs:
            needs = _pretraining_needs(fpha, preset, specs[k], seed, device, pre)
            if needs or not _finished(fpha, preset, specs[k], seed, device, cache):  # finished fine-tunings: only loaded
                todo.setdefault((json.dumps(_run_spec(specs[k]), sort_keys=True, default=str), seed), (k, seed, needs))
        # pre-trainings first; then fine-tunings, each once its pre-trained models are done; the short scorings
        # of untrained chains last: they fill the last round's idle workers
        todo = sorted(todo.values(), key=lambda job: not specs[job[0]]["trained"])
        context = {"root": str(fpha.root), "intrinsics": fpha.intrinsics, "preset": preset, "device": device}
        results = map_jobs(_job, [{"pretrain": job} for job in pre.values()]
                       + [{"run": {**context, "centres": list(tests), "seed": seed, "spec": _run_spec(specs[k])}}
                          for k, seed, _ in todo],
                       describe=_describe, desc="runs", progress=progress,
                       after=[[]] * len(pre) + [sorted(needs) for _, _, needs in todo])
        done = {(k, seed): r for (k, seed, _), r in zip(todo, results[len(pre):])}  # the workers' records
    else:
        done = {}
    out = {k: [] for k in specs}
    for k, seed in tqdm(jobs, desc="loading runs" if pooled else "fusion runs", unit="run", disable=not progress):
        if (k, seed) in done and k not in keep:
            out[k].append(done[(k, seed)])
            continue
        name, trained, hpe_model, har_model, options = _split(specs[k])
        record = run(name, fpha, preset, seed, tests, trained, device, cache, progress and not pooled, hpe_model,
                     har_model, **options)
        out[k].append(record if k in keep else jsonable(record))
    return out


def _run_spec(spec: dict) -> dict:
    """A spec without its seeds: what one run of it is, whatever the seed."""
    return {f: v for f, v in spec.items() if f != "seeds"}


def _split(spec: dict) -> tuple[str, bool, str, str, dict]:
    """(method, trained, hpe_model, har_model, FusionConfig options) of a spec."""
    named = ("method", "trained", "hpe_model", "har_model", "seeds")
    return (*(spec[f] for f in named[:4]), {f: v for f, v in spec.items() if f not in named})


def _pretraining_needs(fpha: FPHA, preset: Preset, spec: dict, seed: int, device: str, pre: dict) -> set[int]:
    """The indices, in ``pre`` (run folder -> pre-training job, added to here), of the pre-trainings a
    spec's run of ``seed`` waits for: those of its pre-trained models not finished on disk."""
    name, _, hpe_model, har_model, options = _split(spec)
    cfg = _method_config(name, preset, options)
    jobs = standalone.pretrain_jobs(fpha, preset, pretrained_requests(seed, cfg.attention, cfg.film, hpe_model, har_model),
                                    device)
    for job in jobs:
        pre.setdefault(job["run"], job)
    return {list(pre).index(job["run"]) for job in jobs}


def _finished(fpha: FPHA, preset: Preset, spec: dict, seed: int, device: str, cache: CropCache) -> bool:
    """Whether a spec's run of ``seed`` is a fine-tuning finished on disk (its pre-trained models are)."""
    name, trained, hpe_model, har_model, options = _split(spec)
    if not trained:
        return False
    cfg, models = _start(name, fpha, preset, seed, device, cache, False, hpe_model, har_model, options)
    return finished(_run_folder(name, models, fpha, preset, cfg, seed, device)[0])


def _describe(job: dict) -> str:
    if "pretrain" in job:
        return standalone.describe_pretraining(job["pretrain"])
    return f"fusion run {job['run']['spec']}, seed {job['run']['seed']}"


def _standard_tests(fpha: FPHA, preset: Preset, cache: CropCache, tests: dict[str, SequenceDataset]) -> bool:
    """Whether a worker can rebuild ``tests`` and the training data itself: the standard test sets
    (a subset of :func:`test_sets`' centres) of the preset's own crop cache."""
    if not standalone.reopenable(fpha, preset, cache):
        return False
    if not set(tests) <= {"gt", "depth"}:
        return False
    standard = test_sets(fpha, preset, cache, progress=False)
    return all(_same_frames(d, standard[c]) for c, d in tests.items())


_worker_tests: dict = {}  # in a worker: (root, preset) -> the test sets, built once


def _job(job: dict) -> dict | str:
    """One job of :func:`run_many` in a worker process: a pre-training (its run folder is returned),
    or a run, trained and scored, written to disk (its record is returned, without the live model)."""
    if "pretrain" in job:
        return standalone.pretrain_job(job["pretrain"])
    job = job["run"]
    preset = job["preset"]
    fpha, cache = standalone.opened(job["root"], job["intrinsics"], preset)
    key = (job["root"], repr(job["intrinsics"]), repr(preset))
    if key not in _worker_tests:
        _worker_tests[key] = test_sets(fpha, preset, cache, progress=False)
    tests = _worker_tests[key]
    name, trained, hpe_model, har_model, options = _split(job["spec"])
    return jsonable(run(name, fpha, preset, job["seed"], {c: tests[c] for c in job["centres"]}, trained, job["device"],
                        cache, False, hpe_model, har_model, **options))


def aggregate(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per centre and metric: [mean, 95 % half-width] over the records' seeds (NaN width for one seed),
    error in mm and accuracy in %."""
    out = {}
    for centre in records[0]["test"]:
        out[centre] = {"error_mm": list(mean_ci95([r["test"][centre]["error_mm"] for r in records])),
                       "accuracy": list(mean_ci95([100 * r["test"][centre]["accuracy"] for r in records]))}
    return out


def jsonable(record: dict) -> dict:
    """A run record without the live model."""
    return {k: v for k, v in record.items() if k != "model"}


def standalone_rows(untrained: list[dict], attention: bool = False) -> dict[str, dict]:
    """The table's standalone rows from the untrained baseline's records (one per seed): the HPE's
    test error (its depth-centre error is the untrained chain's, the same HPE on the same frames)
    and the HAR's accuracy on ground-truth poses."""
    if any(r["trained"] or r["method"] != "baseline" for r in untrained):
        raise ValueError("standalone_rows needs the *untrained* baseline's records (its depth-centre error is the HPE's)")
    hpe = mean_ci95([r["pretrained"]["hpe_error_mm"] for r in untrained])
    har = mean_ci95([100 * r["pretrained"]["har_accuracy"] for r in untrained])
    return {"hpe": {"gt": {"error_mm": list(hpe)}, "depth": {"error_mm": aggregate(untrained)["depth"]["error_mm"]}},
            "har_gt_att" if attention else "har_gt": {"gt": {"accuracy": list(har)}}}


# ----------------------------------------------------------------------------- the ensemble's two passes


def _ensemble_outputs(model: nn.Module, data: SequenceDataset, batch_size: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Both passes of a two-HPE ensemble on ``data``, evaluated once: the valid frames' joints of
    each pass (N, 21, 3) and the truth, each pass's sequence log-probabilities (n, 45), the labels."""
    device = next(model.parameters()).device
    model.eval()
    parts = {k: [] for k in ("j1", "j2", "true", "l1", "l2", "label")}
    with torch.inference_mode(), one_thread(device):
        for start in range(0, len(data), batch_size):
            batch = collate_sequences([data[i] for i in range(start, min(start + batch_size, len(data)))])
            mask = batch["mask"]
            out = model(batch["depth"].to(device), batch["centre"].to(device), mask.to(device))
            for key, p in (("1", out["first"]), ("2", out["second"])):
                parts["j" + key].append(p["joints_mm"][mask.to(device)].double().cpu().numpy())
                parts["l" + key].append(torch.log_softmax(p["logits"].double(), -1).cpu().numpy())
            parts["true"].append(batch["joints_mm"][mask].double().numpy())
            parts["label"].append(batch["label"].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _mixed_scores(o: dict[str, np.ndarray], eta: float, zeta: float) -> dict[str, float]:
    joints = eta * o["j2"] + (1 - eta) * o["j1"]
    logp = zeta * o["l2"] + (1 - zeta) * o["l1"]
    return {"error_mm": float(np.linalg.norm(joints - o["true"], axis=-1).mean()),
            "accuracy": float((logp.argmax(1) == o["label"]).mean())}


def ensemble_passes(model: nn.Module, data: SequenceDataset) -> dict[str, dict[str, float]]:
    """Error (mm) and accuracy of the first pass, the second pass and the mix at the model's eta, zeta."""
    o = _ensemble_outputs(model, data)
    return {"first pass": _mixed_scores(o, 0.0, 0.0), "second pass": _mixed_scores(o, 1.0, 1.0),
            "mixed": _mixed_scores(o, model.cfg.eta, model.cfg.zeta)}


def mix_grid(model: nn.Module, data: SequenceDataset, values: list[float]) -> dict[str, np.ndarray]:
    """Error and accuracy (len(values), len(values)) of the ensemble's output at every eta (rows) and
    zeta (columns) in ``values``.  The passes do not depend on eta and zeta, so they run once."""
    o = _ensemble_outputs(model, data)
    scores = [[_mixed_scores(o, eta, zeta) for zeta in values] for eta in values]
    return {k: np.array([[s[k] for s in row] for row in scores]) for k in ("error_mm", "accuracy")}
