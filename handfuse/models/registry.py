"""The models by name: pose estimators (``HPES``) and action recognisers (``HARS``).

Each entry says how to build a model from its config and where a preset keeps
that config, so pre-training (:mod:`handfuse.standalone`), fusion
(:mod:`handfuse.finetune`), the CLI (``--hpe-model``, ``--har-model``) and the tests
(``tests/test_generality.py``, over every pair) reach every registered model by
its name.  A model only has to implement its interface
(:mod:`handfuse.models.interfaces`); ``docs/extending.md`` registers a third.

The defaults, ``deepprior`` and ``lstm``, are the 2019 study's pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from .har import PoseLSTM
from .hpe import HPE
from .resnet_hpe import ResNetHPE
from .transformer_har import TransformerHAR

DEFAULT_HPE, DEFAULT_HAR = "deepprior", "lstm"


@dataclass(frozen=True)
class Entry:
    """A registered model: ``build(config) -> model`` and ``config(preset) -> its config`` (a frozen
    dataclass; an HPE's has ``crop`` and ``film``, a HAR's ``attention``)."""

    build: Callable[[Any], nn.Module]
    config: Callable[[Any], Any]


HPES: dict[str, Entry] = {
    "deepprior": Entry(HPE, attrgetter("hpe")),  # DeepPrior++: residual CNN + PCA prior
    "resnet": Entry(ResNetHPE, attrgetter("resnet_hpe")),  # ResNet-18-style direct regressor
}
HARS: dict[str, Entry] = {
    "lstm": Entry(PoseLSTM, attrgetter("har")),  # LSTM on poses (the original's)
    "transformer": Entry(TransformerHAR, attrgetter("transformer_har")),  # causal temporal transformer
}


def _entry(registry: dict[str, Entry], kind: str, name: str) -> Entry:
    if name not in registry:
        raise ConfigError(kind, name, f"one of {sorted(registry)}")
    return registry[name]


def hpe_entry(name: str) -> Entry:
    """The registered pose estimator ``name``; a ConfigError naming the allowed ones otherwise."""
    return _entry(HPES, "hpe_model", name)


def har_entry(name: str) -> Entry:
    """The registered action recogniser ``name``; a ConfigError naming the allowed ones otherwise."""
    return _entry(HARS, "har_model", name)


def register(registry: dict[str, Entry], name: str, build: Callable[[Any], nn.Module],
             config: Callable[[Any], Any]) -> Entry:
    """Add a model to ``HPES`` or ``HARS`` under a new ``name``; returns its entry."""
    if name in registry:
        raise ValueError(f"a model named {name!r} is already registered")
    registry[name] = Entry(build, config)
    return registry[name]
