"""The data layer's configuration: the synthetic benchmark and the hand crops.

Kept apart from :mod:`handfuse.config` (which composes these with the models' and the
training loop's configs into presets) so that reading, generating and cropping data never
imports the models or the training loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .errors import ConfigError
from .errors import check as _check

T = TypeVar("T")
SCENES = ("v1", "v2")  # SynthConfig.scene: the synthetic scene's versions


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build a config dataclass from a plain dict, refusing unknown keys (nested dataclasses too)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(prefix + unknown[0], values[unknown[0]], f"known keys of {cls.__name__} are {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        factory = known[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(factory):
            kwargs[name] = from_dict(factory, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic FPHA-format benchmark (``handfuse.synth``).

    Counts: ``subjects`` x 45 actions x ``reps`` sequences; reps 1..reps//2 go to
    the action split's training side, the rest to test (FPHA's 1:1 split is by
    repetition, every subject on both sides).  Difficulty knobs are documented in
    ``handfuse.synth.actions``.

    ``scene`` picks the scene generator: ``"v2"`` (the default since generator 2.0:
    ``handfuse.synth.scene_v2``, a nearer table that the hand comes down to, clutter within reach,
    the other hand, structured sensor holes, rigid annotated bones, calibrated on real FPHA frames;
    docs/data.md) or ``"v1"`` (the earlier open table, which writes exactly the bytes it always did).  Under v2
    ``pose_noise_mm`` is the equivalent joint-position jitter of joint-angle noise
    (``handfuse.synth.annotation``); under v1 it is i.i.d. per joint coordinate.
    """

    subjects: int = 6
    reps: int = 4
    fps: float = 10.0  # frames per second of the rendered sequence (FPHA: 30)
    duration_s: float = 3.0  # mean action duration before the +-30 % speed jitter
    seed: int = 0
    # difficulty knobs (calibrated so that an LSTM on true poses is well below 100 %)
    style_deg: float = 9.0  # per-sequence random finger-angle offsets (std, degrees)
    amplitude_jitter: float = 0.3  # relative jitter of motion amplitudes
    speed_jitter: float = 0.3  # relative jitter of the motion speed (and so of the length)
    orient_jitter_deg: float = 10.0  # per-sequence wrist orientation jitter (std per axis, degrees)
    articulation_gap: float = 1.0  # scales the finger-only differences between look-alike classes
    # how strongly the action determines the hand's articulation: 1 = every finger posture is the action's
    # (FPHA: each object implies its grasp types); 0 = the posture of another, random action (the action
    # then says nothing about the fingers).  handfuse.synth.sequence.decouple
    action_pose_coupling: float = 1.0
    pose_noise_mm: float = 1.5  # per-frame annotation jitter of the written skeleton, mm per coordinate (see scene)
    # sensor model
    depth_noise: float = 1.0  # scales the distance-dependent depth jitter
    dropout: float = 1.0  # scales the invalid-pixel (zero) processes
    png_compression: int = 1  # zlib level: 1 encodes faster than 3 for a little more disk (docs/benchmarks.md)
    render: bool = True  # False writes skeletons only (fast calibration runs); not FPHA-complete
    scene: str = "v2"  # the scene generator, one of SCENES (see the class docstring)

    def __post_init__(self):
        _check(1 <= self.subjects <= 99, "synth.subjects", self.subjects, "an integer in 1..99 (FPHA has 6)")
        _check(self.reps >= 2, "synth.reps", self.reps, "an integer >= 2 (half train, half test)")
        _check(self.fps > 0, "synth.fps", self.fps, "a positive number of frames per second")
        _check(self.duration_s > 0, "synth.duration_s", self.duration_s, "a positive duration in seconds")
        for name in ("style_deg", "orient_jitter_deg", "amplitude_jitter", "articulation_gap", "pose_noise_mm", "depth_noise", "dropout"):
            _check(getattr(self, name) >= 0, f"synth.{name}", getattr(self, name), "a number >= 0")
        _check(0 <= self.speed_jitter < 0.9, "synth.speed_jitter", self.speed_jitter, "a number in [0, 0.9)")
        _check(0 <= self.action_pose_coupling <= 1, "synth.action_pose_coupling", self.action_pose_coupling,
               "a number in [0, 1] (1: the action determines the grasp, 0: it says nothing about it)")
        _check(0 <= self.png_compression <= 9, "synth.png_compression", self.png_compression, "an integer in 0..9")
        _check(self.scene in SCENES, "synth.scene", self.scene, f"one of {SCENES}")


CENTRES = ("gt", "depth")


@dataclass(frozen=True)
class PreprocessConfig:
    """Hand crops: a metric cube around the hand centre, resampled to crop x crop pixels."""

    crop: int = 64  # S: the original used 128
    cube_mm: float = 250.0  # edge of the metric cube
    centre: str = "gt"  # "gt": the middle MCP, as the original; "depth": found from depth alone

    def __post_init__(self):
        _check(self.crop >= 8, "preprocess.crop", self.crop, "an integer >= 8 (pixels)")
        _check(self.cube_mm > 0, "preprocess.cube_mm", self.cube_mm, "a positive size in mm")
        _check(self.centre in CENTRES, "preprocess.centre", self.centre, f"one of {CENTRES}")
