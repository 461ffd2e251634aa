"""Fusion methods, by name (the seed's numbering in brackets).

* ``baseline`` (#1): the HPE on every frame, then the HAR on the predicted poses.
* ``feedback`` (#2): the action after frame t conditions (FiLM) the HPE at frame t+1,
  trained with the p_eq coin.
* ``noisy_feedback`` (beyond the original, the seed's future work): feedback trained on
  noisy action vectors instead of the coin (default: Dirichlet noise, p_eq = 0).
* ``ensemble`` (#3): two HPEs, the second conditioned on the first pass's sequence action.

Temporal attention is a switch (``FusionConfig.attention``), not a method: it picks
the HAR.  :func:`build` makes any of them from the pre-trained models; a variant is
data (a dict of FusionConfig defaults), not a subclass.
"""
from __future__ import annotations


from ..config import from_dict
from ..errors import ConfigError
from .baseline import SequentialBaseline
from .common import FusionConfig, FusionMethod, evaluate_sequences
from .ensemble import TwoHPEEnsemble
from .feedback import ActionFeedback

# name -> (class, the FusionConfig fields this name sets unless the caller does)
METHODS: dict[str, tuple[type[FusionMethod], dict]] = {
    "baseline": (SequentialBaseline, {}),
    "feedback": (ActionFeedback, {}),
    "noisy_feedback": (ActionFeedback, {"noise": "dirichlet", "p_eq": 0.0}),
    "ensemble": (TwoHPEEnsemble, {}),
}


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


__all__ = ["METHODS", "FusionConfig", "FusionMethod", "SequentialBaseline", "ActionFeedback", "TwoHPEEnsemble",
           "build", "evaluate_sequences", "method_config"]
