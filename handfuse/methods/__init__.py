"""Fusion methods, by name (the seed's numbering in brackets).

* ``baseline`` (#1): the HPE on every frame, then the HAR on the predicted poses.
* ``feedback`` (#2): the action after frame t conditions (FiLM) the HPE at frame t+1,
  trained with the p_eq coin.
* ``noisy_feedback`` (beyond the original, the seed's future work): feedback trained on
  noisy action vectors instead of the coin (default: Dirichlet noise, p_eq = 0).
* ``ensemble`` (#3): two HPEs, the second conditioned on the first pass's sequence action.

Temporal attention is a switch (``FusionConfig.attention``), not a method: it picks
the HAR.  :func:`build` makes any of them from the pre-trained models; a variant is
data (a dict of FusionConfig defaults), not a subclass.  :data:`HEADLINE` holds the
options every notebook runs each method with; :func:`register_method` adds a method
from outside the package (``docs/extending.md``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from torch import nn

from ..dataconfig import from_dict
from ..errors import ConfigError
from .baseline import SequentialBaseline
from .common import P_EQ_SCHEDULES, FusionConfig, FusionMethod, evaluate_sequences
from .ensemble import TwoHPEEnsemble
from .feedback import ActionFeedback

# name -> (class, the FusionConfig fields this name sets unless the caller does)
METHODS: dict[str, tuple[type[FusionMethod], dict]] = {
    "baseline": (SequentialBaseline, {}),
    "feedback": (ActionFeedback, {}),
    "noisy_feedback": (ActionFeedback, {"noise": "dirichlet", "p_eq": 0.0}),
    "ensemble": (TwoHPEEnsemble, {}),
}
BUILTIN = frozenset(METHODS)  # what a fresh process knows by name (a pool worker, say)

# the options the study's tables run each method with (02-04, 06 and 07 read them from here; a
# notebook parameter left at None means "the headline's")
HEADLINE: dict[str, dict] = {
    "baseline": {},
    "feedback": {"p_eq": 0.95},  # the original's coin
    "noisy_feedback": {"noise": "dirichlet", "noise_level": 0.5, "p_eq": 0.0},
    "ensemble": {"eta": 0.5, "zeta": 0.5, "train_hpe1": False, "p_eq": 0.95},  # the original's mix, HPE1 frozen
}


# Remedies for exposure bias (issue 22): feedback variants, each with the candidate settings 03
# fine-tunes once and chooses between on validation.  ``frames``: a typical sequence length.
REMEDIES = ("scheduled", "curriculum", "late")


def remedy_candidates(remedy: str, p_eq: float, frames: int) -> dict[str, dict]:
    """The candidate settings of one remedy, as FusionConfig options of ``feedback`` by label:

    - ``scheduled``: scheduled sampling (Bengio et al. 2015), the truth at first and the model's own
      prediction by the end (p_eq = 0: no w_eq coin in the way), linear or inverse-sigmoid decay;
    - ``curriculum``: the conditioned HPE pre-trained on a mix of the truth, w_eq and noisy truth, or
      on label-smoothed truth (``hpe_feed``), then fine-tuned as feedback (``p_eq``);
    - ``late``: the action fed only after the first quarter or half of the frames (``feed_after``)."""
    if remedy == "scheduled":
        return {f"p_true 1 -> 0 ({s})": {"p_true": 1.0, "p_true_schedule": s, "p_eq": 0.0}
                for s in ("linear_decay", "inverse_sigmoid")}
    if remedy == "curriculum":
        return {f"hpe_feed={f}": {"hpe_feed": f, "p_eq": p_eq} for f in ("mix", "smooth")}
    if remedy == "late":
        return {f"feed_after={k}": {"feed_after": k, "p_eq": p_eq} for k in sorted({max(1, frames // 4), max(1, frames // 2)})}
    raise ConfigError("remedies", remedy, f"names from {REMEDIES}")


def headline(name: str, **overrides) -> dict:
    """The headline options of method ``name``, with the ``overrides`` that are not None."""
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {sorted(METHODS)}")
    return {**HEADLINE.get(name, {}), **{k: v for k, v in overrides.items() if v is not None}}


def register_method(name: str, cls: type[FusionMethod], defaults: dict | None = None,
                    headline_options: dict | None = None) -> None:
    """Add fusion method ``name`` (a :class:`FusionMethod` subclass) with its FusionConfig ``defaults``
    and, optionally, the options the tables should run it with."""
    if name in METHODS:
        raise ValueError(f"a fusion method named {name!r} is already registered")
    if not (isinstance(cls, type) and issubclass(cls, FusionMethod)):
        raise TypeError(f"register_method({name!r}): {cls!r} is not a FusionMethod subclass")
    method_config_defaults = dict(defaults or {})
    from_dict(FusionConfig, method_config_defaults, prefix=f"{name}.")  # unknown fields refused now, by name
    METHODS[name] = (cls, method_config_defaults)
    if headline_options is not None:
        HEADLINE[name] = dict(headline_options)


def method_config(name: str, **options) -> FusionConfig:
    """The resolved FusionConfig of method ``name``: its registered defaults, then ``options``."""
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {sorted(METHODS)}")
    return from_dict(FusionConfig, {**METHODS[name][1], **options}, prefix="fusion.")  # unknown keys refused by name


def build(name: str, models, half_cube_mm: float, cfg: FusionConfig | None = None) -> FusionMethod:
    """Method ``name`` from pre-trained ``models`` (``hpe``, ``hpe_film``, ``har``; copied, never
    modified) with ``cfg`` (default: :func:`method_config` of ``name``)."""
    cfg = cfg if cfg is not None else method_config(name)
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {sorted(METHODS)}")
    return METHODS[name][0].from_pretrained(models, half_cube_mm, cfg)


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


__all__ = ["BUILTIN", "HEADLINE", "METHODS", "P_EQ_SCHEDULES", "REMEDIES", "remedy_candidates", "FusionConfig", "FusionMethod", "SequentialBaseline",
           "ActionFeedback", "TwoHPEEnsemble", "build", "evaluate_sequences", "headline", "method_config", "options",
           "register_method"]
