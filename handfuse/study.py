"""The study API the notebooks run on: one object opens everything once, small verbs do the work.

::

    from handfuse.study import Study

    study = Study(preset="cpu", seeds=3)                        # data, crops, test sets, device, seeds
    baseline = study.run("baseline")                            # one RunRecord per seed
    runs = study.grid({"fb": {"method": "feedback", "p_eq": 0.6}, "base": {"method": "baseline"}})
    study.aggregate(runs["fb"])["gt"]["error_mm"]               # [mean, 95 % half-width]
    runs["fb"][0].test.gt.error_mm                              # one seed's test error

:class:`Study` holds the preset, the data root (the preset's synthetic benchmark unless
``data_root`` names an FPHA copy), the crop cache, the test sets (ground-truth and depth
centres), the device and the seeds.  Its verbs: :meth:`Study.pretrain`, :meth:`Study.pretrained`,
:meth:`Study.finetune`, :meth:`Study.evaluate`, :meth:`Study.run`, :meth:`Study.grid`,
:meth:`Study.rescore` and :meth:`Study.aggregate`.  Everything trained lands in content-named run
folders (:mod:`handfuse.runs`), so a second notebook asking for the same run loads it.
"""
from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Iterable

from torch import nn

from . import finetune as _ft
from . import grid as _grid
from .cache import get_cache
from .config import get_preset, notebook_preset
from .datasets import SequenceDataset
from .errors import check
from .fpha import FPHA
from .methods import method_config, options
from .models.registry import DEFAULT_HAR, DEFAULT_HPE
from .paths import ensure_synthetic, use_run_figures
from .plots import data_source
from .pool import one_thread
from .records import RunRecord, CentreScores, aggregate, standalone_rows
from .results import ResultsFile, out_dir, results_dir, run_record
from .reproduce import check_params
from .runs import code_version, data_fingerprint
from .standalone import splits
from .train import FitResult


class Study:
    """One data root, preset, device and set of seeds, opened once (see the module docstring).

    ``preset`` is the notebook's parameter (``HANDFUSE_PRESET`` overrides it in the test suite);
    ``seeds`` counts the seeds from ``seed``; ``film`` is the conditioned HPE's FiLM placement
    (None: the preset's); ``out`` is the folder of this run's results (``<out>/results``; None:
    ``runs/<preset>``, see :mod:`handfuse.results`).  Every parameter is checked before any work starts."""

    def __init__(self, preset: str = "cpu", data_root: str | Path | None = None, seed: int = 0, seeds: int | None = 1,
                 device: str = "cpu", film: str | None = None, progress: bool = True, out: str | Path | None = None):
        self.preset = notebook_preset(preset)
        check_params(self.preset, data_root, seed, device, seeds)
        check(out is None or (isinstance(out, (str, Path)) and str(out) != ""), "out", out,
              "a folder for this run's results (a path), or None for runs/<preset>")
        self.P = get_preset(self.preset)
        self.film = film or self.P.film
        method_config("feedback", film=self.film)  # an unknown placement is refused here, by name
        self.seed, self.seeds = seed, list(range(seed, seed + (seeds or 1)))
        self.device, self.progress = device, progress
        self.root = Path(data_root) if data_root else ensure_synthetic(self.preset)
        self.fpha = FPHA(self.root)
        self.source = data_source(self.root)  # "synthetic", "FPHA" or the folder's name: every title says which
        self.data_root = None if data_root is None else str(Path(data_root).resolve())
        self.out = out_dir(self.preset, out)
        use_run_figures(self.out / "figures" if out is not None or self.source != "synthetic" else None)

    def __repr__(self) -> str:
        return (f"{self.source} data at {self.root} (preset {self.preset}): {len(self.fpha.train)} training and "
                f"{len(self.fpha.test)} test sequences; seeds {self.seeds}, FiLM in {self.film}, device {self.device}; "
                f"results to {self.out / 'results'}")

    @cached_property
    def cache(self):
        """The preset's crop cache of the data root (ground-truth centres), built on first use."""
        return get_cache(self.fpha, self.P.preprocess, progress=self.progress)

    @cached_property
    def tests(self) -> dict[str, SequenceDataset]:
        """The test split cropped around the ground-truth centre (``gt``) and the depth-only one (``depth``)."""
        return _ft.test_sets(self.fpha, self.P, self.cache, self.progress)

    def sequences(self, split: str, seed: int | None = None) -> SequenceDataset:
        """The ``train``, ``val`` or ``test`` sequences (ground-truth centre) of a seed's split."""
        return SequenceDataset(self.cache, splits(self.fpha, self.P, self.seed if seed is None else seed)[split])

    # ------------------------------------------------------------------------- pre-training

    def pretrain(self, *requests: tuple[str, dict]) -> list[tuple[nn.Module, FitResult]]:
        """Pre-train (or load) models: each request is ``("hpe", {"film": .., "seed": .., "model": ..})`` or
        ``("har", {"attention": .., "seed": .., "model": ..})``; on CPU they train side by side."""
        return _grid.pretrain_many(self.fpha, self.P, list(requests), self.device, self.cache, self.progress)

    def pretrained(self, seed: int | None = None, attention: bool = False, hpe_model: str = DEFAULT_HPE,
                   har_model: str = DEFAULT_HAR) -> _ft.Pretrained:
        """The pre-trained models a method of ``seed`` starts from (:func:`handfuse.finetune.pretrained`)."""
        return _ft.pretrained(self.fpha, self.P, self.seed if seed is None else seed, attention, self.film, self.device,
                              self.cache, self.progress, hpe_model, har_model)

    # ------------------------------------------------------------------------- fine-tuning and scoring

    def finetune(self, method: str, seed: int | None = None, hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR,
                 **opts) -> tuple[nn.Module, FitResult]:
        """Method ``method`` with FusionConfig ``opts`` fine-tuned from its pre-trained models (or loaded
        when that run is finished), on one thread on CPU as every run: the live method and its fit result."""
        seed = self.seed if seed is None else seed
        cfg = _ft.resolved_config(method, self.P, {"film": self.film, **opts})
        models = _ft.pretrained(self.fpha, self.P, seed, cfg.attention, cfg.film, self.device, self.cache,
                                self.progress, hpe_model, har_model, cfg.hpe_feed)
        with one_thread(self.device):  # as every run: its numbers must not depend on the thread count
            return _ft.finetune(method, models, self.fpha, self.P, cfg, seed, self.device, self.cache,
                                progress=self.progress)

    def evaluate(self, model: nn.Module, centre: str = "gt", **opts) -> dict:
        """Full test scores of ``model`` on one crop centre, with FusionConfig ``opts`` changed for the
        evaluation only (e.g. ``eval_feed="w_eq"``): ``error_mm``, ``accuracy``, ``loss``, ``logits``,
        ``labels``, ``frame_error_mm`` and ``attention`` (:func:`handfuse.methods.evaluate_sequences`)."""
        with options(model, **opts) as m:
            return _ft.evaluate(m, {centre: self.tests[centre]})[centre]

    def rescore(self, record: RunRecord, centres: Iterable[str] = ("gt",), **opts) -> RunRecord:
        """The same weights (``record.model``, kept by :meth:`run` or :meth:`grid`) scored again with
        FusionConfig ``opts`` changed: a record like ``record`` with the new test scores."""
        if record.model is None:
            raise ValueError(f"rescore: the {record.method} record of seed {record.seed} holds no live model "
                             "(ask run or grid to keep it: keep_model)")
        scores = {c: self.evaluate(record.model, c, **opts) for c in centres}
        return replace(record, test=CentreScores.of(scores), model=None,
                       frame_error_mm={c: [e.tolist() for e in s["frame_error_mm"]] for c, s in scores.items()})

    def run(self, method: str, trained: bool = True, seeds: list[int] | None = None, keep_model: bool = False,
            hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR, **opts) -> list[RunRecord]:
        """One method over the seeds (default: the study's), fine-tuned (``trained``) or chained as
        pre-trained, scored on both centres: one record per seed."""
        spec = {"method": method, "trained": trained, "hpe_model": hpe_model, "har_model": har_model, **opts}
        return self.grid({"run": spec}, seeds=seeds, keep_model=keep_model)["run"]

    def grid(self, specs: dict, seeds: list[int] | None = None, keep_model: bool | Iterable = False,
             centres: Iterable[str] = ("gt", "depth"), **common) -> dict[object, list[RunRecord]]:
        """Many runs at once, side by side on CPU (:func:`handfuse.grid.run_many`): ``specs`` maps a name
        to ``{"method": .., "trained": .., "hpe_model": .., "har_model": .., "seeds": .., **options}``;
        ``common`` options apply to every spec.  ``film`` defaults to the study's.  Returns the
        records per name; those named in ``keep_model`` (True: all) hold their live model."""
        tests = {c: self.tests[c] for c in centres}
        return _grid.run_many(specs, self.fpha, self.P, self.seeds if seeds is None else seeds, tests, self.device,
                              self.cache, self.progress, keep_model, **{"film": self.film, **common})

    # ------------------------------------------------------------------------- tables and results

    aggregate = staticmethod(aggregate)
    standalone_rows = staticmethod(standalone_rows)

    def results_file(self, name: str, own_data: bool = False, **parameters) -> ResultsFile:
        """This run's results file ``<out>/results/<name>.json``, claimed now, before any work: refused
        (:class:`~handfuse.results.ResultsConflict`, naming what differs) when it holds another run's
        results.  The file records the study's parameters (preset, data root, seed, device) and the
        notebook's own ``parameters``, the data source and fingerprint; ``write`` adds the code version.
        ``own_data``: the notebook runs on datasets of its own (``08``'s sweep), so a summary holds the
        file to the parameters only, never to this study's data."""
        params = {"preset": self.preset, "data_root": self.data_root, "seed": self.seed, "device": self.device,
                  **parameters}
        record = {**run_record(self.source, data_fingerprint(self.fpha), params), "preset": self.preset,
                  "seeds": self.seeds, "code": code_version(), **({"own_data": True} if own_data else {})}
        return ResultsFile(results_dir(self.preset, self.out) / f"{name}.json", record).claim()
