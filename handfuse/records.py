"""What a run returns: typed records, and the table rows made from them.

A :class:`RunRecord` is one method, one seed: its resolved configuration, its test scores
per crop centre (``record.test.gt.error_mm``), the scores of the pre-trained models it
started from, its fine-tuning history, and, while a notebook holds it, the live model.
``record.to_json()`` is the results files' layout; :meth:`RunRecord.from_json` reads it back.

:func:`aggregate` turns the records of several seeds into a table row: per centre, the mean
and 95 % half-width of the pose error (mm) and accuracy (%), as ``handfuse.report`` prints them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Iterator

from torch import nn

from .metrics import mean_ci95

CENTRES = ("gt", "depth")  # the crop centres a method is scored on (handfuse.config.CENTRES)


@dataclass(frozen=True)
class Scores:
    """Test scores on one crop centre: mean pose error over valid frames (mm) and action accuracy (0-1)."""

    error_mm: float
    accuracy: float


@dataclass(frozen=True)
class CentreScores:
    """A run's test scores per crop centre: ``gt`` (the ground-truth middle MCP) and ``depth``
    (found from depth alone); a centre that was not scored is None."""

    gt: Scores | None = None
    depth: Scores | None = None

    @classmethod
    def of(cls, scores: dict) -> CentreScores:
        """From ``{centre: {"error_mm": .., "accuracy": .., ...}}`` (an evaluation's or a results file's)."""
        return cls(**{c: Scores(float(s["error_mm"]), float(s["accuracy"])) for c, s in scores.items()})

    def __getitem__(self, centre: str) -> Scores:
        value = getattr(self, centre) if centre in CENTRES else None
        if value is None:
            raise KeyError(f"no test scores for the {centre!r} centre (scored: {list(self.centres)})")
        return value

    @property
    def centres(self) -> tuple[str, ...]:
        return tuple(c for c in CENTRES if getattr(self, c) is not None)

    def items(self) -> Iterator[tuple[str, Scores]]:
        return ((c, getattr(self, c)) for c in self.centres)

    def to_json(self) -> dict:
        return {c: {"error_mm": s.error_mm, "accuracy": s.accuracy} for c, s in self.items()}


@dataclass(frozen=True)
class PretrainedScores:
    """The pre-trained models a run started from: the HPE's test error (plain use and FiLM-conditioned,
    fed w_eq; the same run, see :func:`handfuse.finetune.pretrained`), the HAR's accuracy on true
    poses, and their one-thread training seconds."""

    hpe_error_mm: float
    hpe_film_error_mm: float
    har_accuracy: float
    hpe_seconds: float
    har_seconds: float


@dataclass
class RunRecord:
    """One method, one seed, fine-tuned (``trained``) or chained as pre-trained, scored on the test split."""

    method: str
    seed: int
    trained: bool
    hpe_model: str
    har_model: str
    config: dict  # the resolved FusionConfig, as a dict
    test: CentreScores
    pretrained: PretrainedScores
    history: list = field(default_factory=list)  # fine-tuning, per epoch (handfuse.train.fit)
    val: dict = field(default_factory=dict)  # validation scores of the selected epoch
    train_seconds: float = 0.0
    epoch_seconds: float | None = None  # median fine-tuning seconds per epoch
    frame_error_mm: dict = field(default_factory=dict)  # centre -> one list of per-frame errors per test sequence
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the live method, if kept

    def to_json(self) -> dict:
        """The results files' layout (without the live model)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {**out, "test": self.test.to_json(), "pretrained": dict(vars(self.pretrained))}

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        return cls(**{**{k: v for k, v in d.items() if k != "model"}, "test": CentreScores.of(d["test"]),
                      "pretrained": PretrainedScores(**d["pretrained"])})

    def without_model(self) -> RunRecord:
        return replace(self, model=None)


def aggregate(records: list[RunRecord]) -> dict[str, dict[str, list[float]]]:
    """A table row: per centre, [mean, 95 % half-width] over the records' seeds (NaN width for one
    seed) of the error in mm and the accuracy in %."""
    out = {}
    for centre in records[0].test.centres:
        out[centre] = {"error_mm": list(mean_ci95([r.test[centre].error_mm for r in records])),
                       "accuracy": list(mean_ci95([100 * r.test[centre].accuracy for r in records]))}
    return out


def standalone_rows(untrained: list[RunRecord], attention: bool = False) -> dict[str, dict]:
    """The table's standalone rows from the untrained baseline's records (one per seed): the HPE's
    test error (its depth-centre error is the untrained chain's, the same HPE on the same frames)
    and the HAR's accuracy on ground-truth poses."""
    if any(r.trained or r.method != "baseline" for r in untrained):
        raise ValueError("standalone_rows needs the *untrained* baseline's records (its depth-centre error is the HPE's)")
    hpe = mean_ci95([r.pretrained.hpe_error_mm for r in untrained])
    har = mean_ci95([100 * r.pretrained.har_accuracy for r in untrained])
    return {"hpe": {"gt": {"error_mm": list(hpe)}, "depth": {"error_mm": aggregate(untrained)["depth"]["error_mm"]}},
            "har_gt_att" if attention else "har_gt": {"gt": {"accuracy": list(har)}}}
