"""Typed configuration: one small frozen dataclass per component, composed into named presets.

Unknown keys and impossible values are refused with a :class:`ConfigError` that
names the parameter and what is allowed.  ``asdict(cfg)`` is what goes into every
checkpoint and results file.

Presets (see ``PRESETS``): ``smoke`` is a seconds-long test fixture, ``cpu`` the
default whose whole reproduction runs on a 2-core laptop, ``paper`` FPHA's counts
and the original's model sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .augment import AugmentConfig
from .dataconfig import CENTRES, PreprocessConfig, SynthConfig, from_dict  # noqa: F401 (the data layer's configs)
from .errors import ConfigError
from .errors import check as _check
from .errors import is_int
from .models.film import CONDITIONED
from .models.har import HARConfig
from .models.hpe import HPEConfig
from .models.resnet_hpe import ResNetHPEConfig
from .models.transformer_har import TransformerHARConfig
from .train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """Everything a named size fixes: data, crops, both models, augmentation and training."""

    name: str
    synth: SynthConfig = field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    hpe: HPEConfig = field(default_factory=HPEConfig)
    har: HARConfig = field(default_factory=HARConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_hpe: TrainConfig = field(default_factory=TrainConfig)
    train_har: TrainConfig = field(default_factory=TrainConfig)
    train_fuse: TrainConfig = field(default_factory=TrainConfig)  # fine-tuning a fusion method end to end
    film: str = "both"  # FiLM placement of the conditioned HPE the workbook uses (the original's best: both)
    # fine-tuning's activation checkpointing (FusionConfig.activation_checkpoint): frames per chunk of the
    # pose estimator recomputed in the backward instead of kept, memory for one more forward; 0: off
    activation_checkpoint: int = 0
    # fine-tuning's centre jitter (FusionTask.jitter_mm): std per axis, mm, of a random shift of each training
    # frame's crop centre, meant to keep the pose estimator's tolerance of an imperfect centre; 0: off.  Off in
    # every preset: at the cpu preset (python -m benchmarks.centre_jitter, 3 seeds, paired, benchmarks/
    # centre_jitter.json) 10 mm made the trained baseline worse on validation (+0.56 +- 0.27 mm, accuracy -3.7 +-
    # 3.2 points) and on the dev benchmarks' depth centres as well (+0.43 +- 0.16 and +0.52 +- 0.31 mm)
    fuse_jitter_mm: float = 0.0
    # the second pose estimator and action recogniser (handfuse.models.registry: "resnet", "transformer")
    resnet_hpe: ResNetHPEConfig = field(default_factory=ResNetHPEConfig)
    transformer_har: TransformerHARConfig = field(default_factory=TransformerHARConfig)
    # the action_pose_coupling values 08_when_fusion_helps sweeps by default, one synthetic benchmark each
    sweep_couplings: tuple[float, ...] = (0.0, 0.5, 1.0)

    def __post_init__(self):
        _check(self.film in CONDITIONED, "film", self.film, f"one of {CONDITIONED}")
        _check(is_int(self.activation_checkpoint) and self.activation_checkpoint >= 0, "activation_checkpoint",
               self.activation_checkpoint, "an integer >= 0 (frames per checkpointed chunk; 0: off)")
        _check(self.fuse_jitter_mm >= 0, "fuse_jitter_mm", self.fuse_jitter_mm, "a std in mm >= 0 (0: off)")
        _check(valid_couplings(self.sweep_couplings), "sweep_couplings", self.sweep_couplings,
               "at least 2 distinct couplings in [0, 1]")
        for name in ("hpe", "resnet_hpe"):
            _check(getattr(self, name).crop == self.preprocess.crop, f"{name}.crop", getattr(self, name).crop,
                   f"the crop size of the data, preprocess.crop = {self.preprocess.crop}")


def valid_couplings(couplings) -> bool:
    """At least 2 distinct action_pose_coupling values, each a number in [0, 1]: a sweep 08 can run."""
    return (len(couplings) >= 2 and len(set(couplings)) == len(couplings)
            and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in couplings))


_HAR_TRAIN = dict(batch_size=20, lr=3e-3)  # the original's HAR optimiser settings (Adam)
_FUSE_TRAIN = dict(batch_size=4, lr=3e-5, weight_decay=1e-5)  # the original's fine-tuning (Adam)
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke",
        SynthConfig(subjects=2, reps=2, fps=3.0, duration_s=1.6),
        PreprocessConfig(crop=32),
        HPEConfig(crop=32, stem_channels=8, widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), pool=2, fc=64),
        HARConfig(hidden=32),
        # a test fixture, trained just enough that every model learns measurably, so that the notebooks'
        # checks (handfuse.checks) hold here too, with a margin (seeds 0-2, every registered model; measured
        # in docs/reliability.md).  With +-180 degree rotations on its ~215 training frames the HPE stayed at
        # the mean-pose guess's error; with +-15 degrees and 10 whole epochs it ends well below it
        augment=AugmentConfig(rotation_deg=15.0),
        train_hpe=TrainConfig(epochs=10, batch_size=16, patience=4),
        train_har=TrainConfig(epochs=30, patience=10, **_HAR_TRAIN),
        # whole epochs in batches of 5 sequences: 5 divides the 45 training sequences, so every epoch's mean
        # training loss averages the same sequences, equally weighted, and the first and last epochs compare
        train_fuse=TrainConfig(epochs=3, patience=3, batch_size=5, lr=1e-3, weight_decay=1e-5),
        resnet_hpe=ResNetHPEConfig(crop=32, stem_channels=8, widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), fc=64),
        transformer_har=TransformerHARConfig(d_model=32, heads=2, layers=1, ff=64, dropout=0.0),
        # 08's sweep at its two ends only: the test suite then generates and trains one sweep benchmark, not
        # two (its time: docs/benchmarks.md), and the ends run every code path the middle runs
        sweep_couplings=(0.0, 1.0),
    ),
    "cpu": Preset(
        "cpu",
        SynthConfig(fps=6.0, duration_s=2.2),
        PreprocessConfig(crop=64),
        # the original's layout (stem, four bottleneck groups, two FC layers, PCA prior) at half its widths,
        # one block per group.  On validation (python -m benchmarks.tuning, 2 seeds, benchmarks/tuning.json) the
        # original's widths differ by -0.11 +- 0.30 mm (paired, no difference) for 2.9 times the training time.
        # Every bottleneck keeps at least 16 inner channels (the first would narrow to 8), which makes the net
        # channels_last-safe (see channels_last_safe), the faster memory format on CPU.  The stem convolves with
        # stride 2 instead of max-pooling a full-size map (stem_stride=2: 8.3 MFLOPs per frame against 10.8), one
        # of the three trims that keep the reproduction within 30 minutes on 2 cores (with 8 pre-training and 2
        # fine-tuning epochs, below).  On validation (python -m benchmarks.stem, 3 seeds, paired, benchmarks/stem.json)
        # each costs the trained baseline about half a millimetre (stride +0.53 +- 1.19, 8 pre-training epochs
        # +0.52 +- 0.24, 2 fine-tuning epochs +0.50 +- 0.30 mm) and the three together +1.61 +- 1.02 mm (accuracy
        # -1.5 +- 4.2 points) against the original stem with 10 + 3 epochs; the oracle's headroom stays (2.58 against
        # 2.36 mm).  Their time: docs/benchmarks.md
        HPEConfig(crop=64, stem_channels=16, stem_stride=2, widths=(32, 64, 128, 128), blocks=(1, 1, 1, 1), fc=512,
                  min_mid=16),
        # the original's input (camera-frame joints).  On validation (python -m benchmarks.har_input, scene v2, 3
        # seeds) the hand's joint angles (frame="angles", dropout 0.5, 150 epochs) tell the look-alike pairs apart
        # better from true poses (within-pair 81.2 against 56.2 %) but read predicted poses far worse (accuracy
        # 40.4 against 77.4 %: -37.0 +- 9.7 points), and the workbook's recogniser reads predicted poses; 01
        # trains that angle reader beside it (handfuse.standalone.ARTICULATION)
        HARConfig(),
        # cosine decay: on validation (benchmarks.tuning, 2 seeds) 16 epochs at a constant rate differ from 10 cosine
        # ones by -0.68 +- 1.14 mm (paired, no difference) for 2.3 times the training time; 8, not 10: a time trim
        # (see the HPE above)
        train_hpe=TrainConfig(epochs=8, batch_size=64, patience=10, schedule="cosine"),
        train_har=TrainConfig(epochs=80, patience=15, **_HAR_TRAIN),
        # the original's fine-tuning is batch 4 at 3e-5 for many epochs; batch 16 at 2e-4 with cosine decay for
        # 3 epochs does as well on validation (benchmarks.tuning, baseline, 2 seeds; the original's 6 epochs minus
        # this: joint loss -0.000 +- 0.001, pose -0.06 +- 0.78 mm, accuracy +3.9 +- 7.1 points, paired, no
        # difference) in half the CPU time (tiny batches keep the CNN's kernels from running at speed).  2, not 3: a
        # time trim (see the HPE above); 08's smaller benchmarks keep 3 (its fine_tune_epochs)
        train_fuse=TrainConfig(epochs=2, patience=2, batch_size=16, lr=2e-4, weight_decay=1e-5, schedule="cosine"),
        film="fc",  # FC-only FiLM: the conv trunk runs once per frame, so feedback costs ~ the baseline's time
        # ResNet-18's layout at a quarter of its widths: 18 MFLOPs per frame (DeepPrior++ here: 8.3)
        resnet_hpe=ResNetHPEConfig(crop=64),
        # 2 blocks of width 64: 2.2 MFLOPs per 16-frame sequence, as the LSTM's
        transformer_har=TransformerHARConfig(),
    ),
    "paper": Preset(
        "paper",
        SynthConfig(subjects=6, reps=5, fps=30.0, duration_s=2.8),
        PreprocessConfig(crop=128),
        HPEConfig(crop=128),  # the original's network: 5 bottleneck blocks per group
        HARConfig(),
        train_hpe=TrainConfig(epochs=60, batch_size=128, patience=8),
        train_har=TrainConfig(epochs=150, patience=25, **_HAR_TRAIN),
        train_fuse=TrainConfig(epochs=20, patience=5, **_FUSE_TRAIN),
        # fine-tuning keeps the activations of one chunk of 32 frames, not of all B x T = 480: the measured
        # peak memory and the time it costs are in docs/benchmarks.md (python -m benchmarks.memory)
        activation_checkpoint=32,
        resnet_hpe=ResNetHPEConfig(crop=128, stem_channels=32, stem_kernel=7, widths=(32, 64, 128, 256)),
        transformer_har=TransformerHARConfig(d_model=128, heads=4, layers=3, ff=256),
    ),
}


def get_preset(name: str) -> Preset:
    """A named preset.  ``HANDFUSE_PRESET`` is *not* read here: see :func:`notebook_preset`."""
    if name not in PRESETS:
        raise ConfigError("preset", name, f"one of {sorted(PRESETS)}")
    return PRESETS[name]


def notebook_preset(preset: str) -> str:
    """The preset a notebook runs: its parameter, unless the test suite forces one through the
    ``HANDFUSE_PRESET`` environment variable (``make test`` sets it to ``smoke`` for nbval)."""
    forced = os.environ.get("HANDFUSE_PRESET")
    name = forced or preset
    get_preset(name)
    return name
