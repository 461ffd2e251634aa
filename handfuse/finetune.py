"""Fine-tuning a fusion method and scoring it honestly: the science under the study API.

For one method, one configuration and one seed:

1. :func:`pretrained` loads (or trains, through :mod:`handfuse.standalone`) the plain HPE,
   the FiLM-conditioned HPE and the HAR of that seed;
2. :func:`finetune` builds the method (:func:`handfuse.methods.build`) and fine-tunes it with
   ``handfuse.train.fit`` on the training side of the action split, selecting the epoch on the
   validation split's joint loss; the run folder is keyed by the method's resolved
   configuration, so a finished run is loaded, not trained again;
3. :func:`evaluate` scores it on the test split once per crop centre: ``"gt"`` (the ground-truth
   middle MCP, as the original) and ``"depth"`` (found from depth alone), through the score store
   of :mod:`handfuse.runs`.

:func:`run` does all three and returns a :class:`~handfuse.records.RunRecord`.  Many runs at
once, side by side on CPU, are :func:`handfuse.grid.run_many`'s; notebooks reach all of this
through :class:`handfuse.study.Study`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .augment import jitter_centres
from .cache import CropCache, get_cache
from .config import Preset
from .datasets import SequenceDataset
from .distributed import rank_world
from .fpha import FPHA
from .methods import FusionConfig, build, evaluate_sequences, method_config
from .methods.common import see_labels
from .models.registry import DEFAULT_HAR, DEFAULT_HPE
from .pool import one_thread
from .records import CENTRES, PretrainedScores, RunRecord, CentreScores
from .runs import ScoreStore, fingerprint, identity, models_dir, run_folder, same_frames, thread_record, weights_digest
from .standalone import pretrain, splits
from .tasks import sequence_batches
from .train import FitResult, TrainConfig, epoch_generator, fit

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

    def scores(self) -> PretrainedScores:
        """The test scores and training seconds of these models, as a run record carries them."""
        r = self.results
        return PretrainedScores(r["hpe"].test["error_mm"], r["hpe_film"].test["error_mm"], r["har"].test["accuracy"],
                                r["hpe_film"].seconds, r["har"].seconds)


def pair_name(hpe_model: str, har_model: str) -> str:
    """``""`` for the default pair, else ``"<hpe>-<har>"`` (e.g. ``"resnet-transformer"``)."""
    return "" if (hpe_model, har_model) == (DEFAULT_HPE, DEFAULT_HAR) else f"{hpe_model}-{har_model}"


def pretrained_requests(seed: int, attention: bool, film: str, hpe_model: str = DEFAULT_HPE,
                        har_model: str = DEFAULT_HAR, hpe_feed: str = "w_eq") -> list[tuple[str, dict]]:
    """What :func:`pretrained` pre-trains, as :func:`handfuse.standalone.pretrain` requests: the
    w_eq-fed conditioned HPE, the HAR, and the conditioned HPE pre-trained on ``hpe_feed`` when that
    is another feed."""
    requests = [("hpe", {"film": film, "seed": seed, "model": hpe_model}),
                ("har", {"attention": attention, "seed": seed, "model": har_model})]
    if hpe_feed != "w_eq":
        requests.append(("hpe", {"film": film, "seed": seed, "model": hpe_model, "feed": hpe_feed}))
    return requests


def pretrained(fpha: FPHA, preset: Preset, seed: int, attention: bool = False, film: str = "both",
               device: str = "cpu", cache: CropCache | None = None, progress: bool = True,
               hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR, hpe_feed: str = "w_eq") -> Pretrained:
    """The pre-trained models every method of one seed starts from: the pose estimator and the
    action recogniser registered as ``hpe_model`` and ``har_model``.

    One HPE is pre-trained per seed: the FiLM-conditioned one (placement ``film``), fed w_eq.  Fed
    w_eq, each FiLM is a constant per-channel affine, so this *is* a plain DeepPrior++ HPE; it serves
    as both ``hpe`` and ``hpe_film``.  Every method thus starts from the same weights, and what
    differs between them is only what they add (the fed action, the second pass), not a second
    pre-training run's luck.  ``01_standalone`` pre-trains a plain HPE beside it and shows that the
    two reach the same error.

    ``hpe_feed`` other than w_eq (a curriculum pre-training, :data:`handfuse.tasks.PRETRAIN_FEEDS`)
    makes ``hpe_film`` the conditioned HPE pre-trained on that feed; ``hpe`` stays the w_eq one."""
    made = [pretrain(fpha, preset, kind, kwargs, device, cache, progress)
            for kind, kwargs in pretrained_requests(seed, attention, film, hpe_model, har_model, hpe_feed)]
    (hpe, r_hpe), (har, r_har) = made[:2]
    hpe_film, r_film = made[2] if hpe_feed != "w_eq" else made[0]
    return Pretrained(hpe, hpe_film, har, {"hpe": r_hpe, "hpe_film": r_film, "har": r_har}, hpe_model, har_model)


@dataclass
class FusionTask:
    """A ``fit`` task over whole sequences of the crop cache: the method's joint loss; selection
    on the validation split's joint loss (the training objective), also reporting error and accuracy.

    The method learns which epoch it is in (:meth:`handfuse.methods.FusionMethod.at_epoch`) at
    each step, so an option that changes over training (a p_eq schedule) reads it from there.

    ``jitter_mm`` > 0 moves every training frame's crop centre by a random shift of that std per
    axis (:func:`handfuse.augment.jitter_centres`), drawn per epoch from the run's seed; validation
    and test frames keep their centres."""

    data: dict[str, SequenceDataset]
    jitter_mm: float = 0.0
    metric: str = "loss"
    higher_is_better: bool = False
    eval_batch: int = EVAL_BATCH
    scored: dict = field(default_factory=dict)  # split -> the full scores of its last evaluation
    epoch: int = 0
    epochs: int = 1

    def batches(self, split, epoch, cfg):
        self.epoch, self.epochs = epoch, cfg.epochs
        batches = sequence_batches(self.data[split], epoch, cfg, salt=2)
        if not self.jitter_mm or split != "train":
            return batches
        gen = epoch_generator(cfg.seed, epoch, 300 + rank_world()[0])  # each rank its own draws
        half_cube = self.data[split].half_cube
        return (jitter_centres(b, self.jitter_mm, half_cube, gen) for b in batches)

    def loss(self, model, batch):
        model.at_epoch(self.epoch, self.epochs)
        see_labels(model, batch["label"])  # for the feeds of the truth (scheduled sampling)
        return model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)

    def evaluate(self, model, split, cfg):
        r = self.scored[split] = evaluate_sequences(model, self.data[split], self.eval_batch)
        return {k: r[k] for k in ("loss", "error_mm", "accuracy")}


def resolved_config(name: str, preset: Preset, options: dict) -> FusionConfig:
    """A method's resolved configuration: its registered defaults, ``film`` and ``activation_checkpoint``
    defaulting to the preset's, then ``options``."""
    return method_config(name, **{"film": preset.film, "activation_checkpoint": preset.activation_checkpoint, **options})


def build_method(name: str, models: Pretrained, preset: Preset, cfg: FusionConfig, seed: int) -> nn.Module:
    """Method ``name`` built from ``models`` (copies); what ``cfg.film_response`` draws depends on ``seed`` only."""
    torch.manual_seed(seed)
    return build(name, models, preset.preprocess.cube_mm / 2, cfg)


def jitter_record(preset: Preset) -> dict:
    """What a fine-tuning run's config records of the preset's centre jitter: ``fuse_jitter_mm`` when it
    is on, nothing when off, so that runs fine-tuned without it keep the folders they had before it."""
    return {"fuse_jitter_mm": preset.fuse_jitter_mm} if preset.fuse_jitter_mm else {}


def finetune_run(name: str, models: Pretrained, fpha: FPHA, preset: Preset, cfg: FusionConfig, seed: int,
                 device: str = "cpu", root: str | Path | None = None) -> tuple[Path, dict, TrainConfig]:
    """Where a fine-tuning run lives (``fuse-<method>[-<hpe>-<har>]-<8 hex>-seed<seed>``), with its
    resolved configuration and training settings."""
    train_cfg = replace(preset.train_fuse, seed=seed, device=device)
    config = {"data": str(fpha.root.resolve()), **identity(fpha), "preset": preset.name, "method": name,
              "fusion": asdict(cfg), "pretrained": {k: r.config for k, r in models.results.items()},
              "pretrained_weights": {k: weights_digest(r) for k, r in models.results.items()}, **thread_record(device)}
    config.update(jitter_record(preset))
    method = f"{name}-{models.pair}" if models.pair else name
    return run_folder(preset, f"fuse-{method}", config, train_cfg, seed, root), config, train_cfg


def finetune(name: str, models: Pretrained, fpha: FPHA, preset: Preset, cfg: FusionConfig, seed: int,
             device: str = "cpu", cache: CropCache | None = None, root: str | Path | None = None,
             progress: bool = True, scored: dict | None = None) -> tuple[nn.Module, FitResult]:
    """Method ``name`` built from ``models`` and fine-tuned end to end (``preset.train_fuse``).

    ``scored``, if given, receives the full scores (:func:`evaluate_sequences`) of the test split
    when this call trained the run and so scored it; a finished run loaded from disk leaves it empty."""
    cache = cache or get_cache(fpha, preset.preprocess, progress=progress)
    model = build_method(name, models, preset, cfg, seed)
    data = {k: SequenceDataset(cache, refs) for k, refs in splits(fpha, preset, seed).items()}
    run, config, train_cfg = finetune_run(name, models, fpha, preset, cfg, seed, device, root)
    task = FusionTask(data, jitter_mm=preset.fuse_jitter_mm)
    result = fit(model, task, train_cfg, run, config, progress=progress)
    if scored is not None and "test" in task.scored:
        scored[task.data["test"]] = task.scored["test"]
    return model, result


DEPTH_LOCALISER_SEED = 0  # the localiser of the depth-centred test sets (one per dataset), trained on CPU


class CentredTestSets(Mapping):
    """The test split cropped around each kind of centre (:data:`CENTRES`), each built on first use
    (and cached on disk): ``gt``, the middle MCP; ``depth``, found from depth alone by
    :func:`handfuse.localise.locate_sequence` with the preset's learned ComRefNet refinement, trained
    on the training split (seed 0: one localiser per dataset) the first time it is needed."""

    def __init__(self, fpha: FPHA, preset: Preset, cache: CropCache | None = None, progress: bool = True):
        self.fpha, self.preset, self.progress = fpha, preset, progress
        self._built: dict[str, SequenceDataset] = {}
        if cache is not None:
            self._built["gt"] = SequenceDataset(cache, fpha.test)

    def __getitem__(self, centre: str) -> SequenceDataset:
        if centre not in CENTRES:
            raise KeyError(f"no test set for centre {centre!r}: one of {CENTRES}")
        if centre not in self._built:
            self._built[centre] = SequenceDataset(self._cache(centre), self.fpha.test)
        return self._built[centre]

    def _cache(self, centre: str) -> CropCache:
        if centre == "gt":
            return get_cache(self.fpha, self.preset.preprocess, progress=self.progress)
        from .standalone import pretrain_localiser

        refiner = pretrain_localiser(self.fpha, self.preset, seed=DEPTH_LOCALISER_SEED, progress=self.progress)[1].run_dir
        return get_cache(self.fpha, replace(self.preset.preprocess, centre="depth"), sequences=self.fpha.test,
                         progress=self.progress, refiner=refiner)

    def __iter__(self):
        return iter(CENTRES)

    def __len__(self) -> int:
        return len(CENTRES)


def test_sets(fpha: FPHA, preset: Preset, cache: CropCache | None = None, progress: bool = True) -> CentredTestSets:
    """The test split cropped around each kind of centre, ``gt`` and ``depth``, each built when first
    looked up (:class:`CentredTestSets`)."""
    return CentredTestSets(fpha, preset, cache, progress)


def evaluate(model: nn.Module, tests: dict[str, SequenceDataset], scored: dict | None = None,
             store: ScoreStore | None = None) -> dict[str, dict]:
    """Test error (mm), accuracy and per-sequence details of ``model`` for each crop centre.

    ``scored`` maps datasets already scored with these very weights (by :func:`finetune`) to their
    scores; a test set holding the same sequences of the same crops is not scored again.  With a
    ``store``, scores found there are loaded and fresh ones are saved to it.  On CPU it scores on
    one thread, wherever it runs: the last bits of a score can depend on the thread count, and a
    stored score must be the one a fresh evaluation gives."""
    out = {}
    with one_thread(next(model.parameters()).device):
        for centre, data in tests.items():
            done = [r for d, r in (scored or {}).items() if same_frames(d, data)]
            found = store.load(model, data) if store is not None and not done else None
            if found is not None:
                out[centre] = found
                continue
            out[centre] = done[0] if done else evaluate_sequences(model, data, batch_size=EVAL_BATCH)
            if store is not None:
                store.save(model, data, out[centre])
    return out


def run(name: str, fpha: FPHA, preset: Preset, seed: int, tests: dict[str, SequenceDataset], trained: bool = True,
        device: str = "cpu", cache: CropCache | None = None, progress: bool = True, hpe_model: str = DEFAULT_HPE,
        har_model: str = DEFAULT_HAR, **options) -> RunRecord:
    """One method, one seed: pre-trained models (the registered ``hpe_model`` and ``har_model``),
    fine-tuned (``trained``) or chained as they are, scored on ``tests``.  ``options`` are
    FusionConfig fields (``film`` defaults to the preset's).  The record holds the live method."""
    cfg = resolved_config(name, preset, options)
    models = pretrained(fpha, preset, seed, cfg.attention, cfg.film, device, cache, progress, hpe_model, har_model,
                        cfg.hpe_feed)
    scored = {}  # the gt test split, if fine-tuning just scored it with the selected weights
    if trained:
        with one_thread(device):  # on CPU one thread, wherever the run runs (see handfuse.pool)
            model, fitted = finetune(name, models, fpha, preset, cfg, seed, device, cache, progress=progress, scored=scored)
        weights = fingerprint(fitted)
    else:
        model, fitted = build_method(name, models, preset, cfg, seed).to(device), None
        weights = (f"untrained, seed {seed}, {thread_record(device)}, "
                   + fingerprint(*(models.results[k] for k in ("hpe", "hpe_film", "har"))))
    scores = evaluate(model, tests, scored, ScoreStore(models_dir(preset) / "scores", weights, name))  # one thread too
    return RunRecord(
        method=name, seed=seed, trained=trained, hpe_model=hpe_model, har_model=har_model, config=asdict(cfg),
        test=CentreScores.of(scores), pretrained=models.scores(),
        history=fitted.history if fitted else [], val=fitted.val if fitted else {},
        train_seconds=fitted.seconds if fitted else 0.0,
        epoch_seconds=float(np.median([h["seconds"] for h in fitted.history])) if fitted and fitted.history else None,
        frame_error_mm={c: [e.tolist() for e in s["frame_error_mm"]] for c, s in scores.items()}, model=model)
