"""Every run a reproduction trains, in one place: what notebooks 01-04 and 06 ask for.

:func:`plan` returns, per notebook, the pre-trainings it requests (``study.pretrain``) and the
fine-tunings its ``study.grid`` cells run, as :func:`handfuse.grid.run_many` specs with every field
resolved as the notebook's :class:`~handfuse.study.Study` resolves it.  The notebooks' parameters
come from their own ``parameters`` cells (:func:`notebook_defaults`), so a changed default there
changes the plan; the spec dicts mirror the notebooks' cells (a test holds each notebook's spec
names to its source).  ``python -m handfuse train-all`` (:mod:`handfuse.train_all`) trains the
plan as independent jobs, so that the notebooks then only load finished runs.

Covered: ``01_standalone`` (its pre-trainings), ``02_baseline``, ``03_feedback``, ``04_ensemble``
and ``06_generality`` (every fine-tuning, and the pre-trainings each starts from).  Not covered: the
untrained chains (short scorings the notebooks do themselves), 03's remedy runs of the seeds after
the first (each remedy's setting is chosen on the validation split of finished runs: 03 trains those
itself), and ``08_when_fusion_helps`` (its own benchmarks).
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import Preset
from .grid import resolve_specs
from .methods import headline, remedy_candidates
from .paths import REPO

NOTEBOOKS = ("01", "02", "03", "04", "06")


@dataclass
class NotebookRuns:
    """What one notebook trains: pre-training requests (``("hpe", kwargs)`` / ``("har", kwargs)``) and
    resolved fine-tuning specs by name (``"<NN>:<the notebook's name>"``)."""

    pretrain: list[tuple[str, dict]] = field(default_factory=list)
    specs: dict[str, dict] = field(default_factory=dict)


def notebook_defaults(number: str, folder: Path = REPO / "notebooks") -> dict:
    """The literals of notebook ``NN_*.ipynb``'s ``parameters`` cell (house style: literals only)."""
    path = next(folder.glob(f"{number}_*.ipynb"))
    cells = json.loads(path.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def plan(preset: Preset, seeds: int | None = None, seed: int | None = None, frames: int = 8,
         notebooks: tuple[str, ...] = NOTEBOOKS) -> dict[str, NotebookRuns]:
    """The runs of ``notebooks`` with their default parameters, ``seeds`` and ``seed`` overriding
    theirs (as ``reproduce --seeds``, ``--seed`` do).  ``frames``: the data's median sequence length
    (03's ``late`` remedy candidates depend on it)."""
    built = {"01": _standalone, "02": _baseline, "03": _feedback, "04": _ensemble, "06": _generality}
    out = {}
    for nb in notebooks:
        params = {**notebook_defaults(nb), **({"seeds": seeds} if seeds is not None else {}),
                  **({"seed": seed} if seed is not None else {})}
        s0 = params["seed"]
        film = params.get("film") or preset.film  # as Study: None is the preset's placement
        runs = built[nb](params, film, frames)
        specs = resolve_specs(runs.specs, list(range(s0, s0 + params.get("seeds", 1))), film=film)
        out[nb] = NotebookRuns(runs.pretrain, {f"{nb}:{k}": v for k, v in specs.items() if v["trained"]})
    return out


def _standalone(p: dict, film: str, frames: int) -> NotebookRuns:
    s = p["seed"]
    look_seeds = [s + k for k in range(3)]
    return NotebookRuns([("localiser", {"seed": 0}), ("hpe", {"film": "none", "seed": s}), ("hpe", {"film": film, "seed": s}),
                         ("hpe", {"film": film, "seed": s, "feed": "true"}), ("har", {"attention": True, "seed": s}),
                         *[("har", {"attention": False, "seed": k}) for k in look_seeds],
                         *[("har", {"attention": False, "seed": k, "articulation": True}) for k in look_seeds],
                         # 02-04's other seeds, pre-trained beside the refiner
                         *[("hpe", {"film": film, "seed": k, **fed}) for k in range(s + 1, s + p["seeds"])
                           for fed in ({}, {"feed": "true"})]])


def _baseline(p: dict, film: str, frames: int) -> NotebookRuns:
    options = dict(attention=p["attention"], w_nll=p["w_nll"], w_pose=p["w_pose"], freeze_norm=p["freeze_norm"])
    specs = {"untrained": {"method": "baseline", "trained": False}, "trained": {"method": "baseline"},
             "pose_only": {"method": "baseline", "w_nll": 0.0, "w_pose": 1.0, "train_har": False}}
    return NotebookRuns([], {k: {**options, **v} for k, v in specs.items()})


def _feedback(p: dict, film: str, frames: int) -> NotebookRuns:
    options = dict(attention=p["attention"], film=film, coin=p["coin"], feedback_grad=p["feedback_grad"])
    p_eq = headline("feedback", p_eq=p["p_eq"])["p_eq"]
    seeds = range(p["seed"], p["seed"] + p["seeds"])
    specs = {"untrained": {"method": "baseline", "trained": False, "attention": p["attention"]},
             "baseline": {"method": "baseline", "attention": p["attention"]},
             "feedback": {"method": "feedback", "p_eq": p_eq, **options},
             **{f"sweep p_eq={q}": {"method": "feedback", "p_eq": q, "seeds": [p["seed"]], **options}
                for q in p["trained_p_eq"]}}
    for remedy in p["remedies"]:  # the candidates, each fine-tuned once (seed `seed`) and chosen on validation
        for label, setting in remedy_candidates(remedy, p_eq, frames).items():
            specs[f"{remedy} {label}"] = {"method": "feedback", **options, **setting, "seeds": [p["seed"]]}
    oracles = [("hpe", {"film": film, "seed": s, "feed": "true"}) for s in seeds]
    return NotebookRuns(oracles, specs)


def _ensemble(p: dict, film: str, frames: int) -> NotebookRuns:
    ensemble_opts = headline("ensemble", eta=p["eta"], zeta=p["zeta"], train_hpe1=p["train_hpe1"], p_eq=p["p_eq"])
    specs = {}
    for att, suffix in ((False, ""), (True, "_att")):
        specs["baseline" + suffix] = {"method": "baseline", "attention": att}
        specs["ensemble" + suffix] = {"method": "ensemble", "attention": att, **ensemble_opts}
    specs["feedback"] = {"method": "feedback", **headline("feedback", p_eq=p["p_eq"])}
    specs["noisy_feedback"] = {"method": "noisy_feedback",
                               **headline("noisy_feedback", noise=p["noise"], noise_level=p["noise_level"])}
    return NotebookRuns([], specs)


def _generality(p: dict, film: str, frames: int) -> NotebookRuns:
    options = {name: headline(name, p_eq=p["p_eq"] if name in ("feedback", "ensemble") else None) for name in p["methods"]}
    specs = {f"{name} {h}+{a}": {"method": name, "hpe_model": h, "har_model": a, **options[name]}
             for h in p["hpe_models"] for a in p["har_models"] for name in p["methods"]}
    return NotebookRuns([], specs)
