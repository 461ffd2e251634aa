"""Do the refiner's training augmentations pay: ``python -m benchmarks.refiner_scale``.

The refiner (:mod:`handfuse.localise`) regresses millimetres in a metric cube, so a hand smaller or larger
than the synthetic subjects' costs it accuracy, and so do holes across the hand (``benchmarks.localise
--sensor``).  This trains, or loads when finished, the preset's refiner of each seed (``--seeds``) with each
``RefineConfig.scale_sigma`` (``--sigmas``), each ``RefineConfig.hole_share`` (``--holes``) and each
``RefineConfig.hole_widen`` (``--widen``): every combination, the first the reference (``--coarse-only``: holes
in the first stage's training crops alone, ``RefineConfig.hole_fine = False``); on the preset's training split,
and measures each on the test sequences of the dev benchmarks (``--dev-seeds``, every ``--every``-th; never the
study's test split) with the frames as rendered, the scene 15 % nearer and smaller, 10 % farther and larger,
the camera 50 mm nearer, wider shadows, speckle and holes on the skin (:func:`benchmarks.localise.measure_sensor`).

It prints, per change and pooled over the dev benchmarks, each refiner's mean centre error and each variant's
difference from the first, paired by seed (95 % t-interval over the seeds); "size-averaged" is the mean over
the frames as rendered, smaller and larger, the measure the preset's sigma was chosen on, "hole-averaged" that
over the frames as rendered, with wider shadows, speckle and holes on the skin, the measure hole shares are
screened on.  A change some record lacks (measured before it was added) is left out of the table.  With
``--pose-hpe RUN``, a finished plain HPE pre-training, the pose error on crops around each refiner's centres
(and around the true centres) on every ``--pose-every``-th dev test sequence joins the record and the table.
A refiner already measured as asked is not measured again.  Records go to ``benchmarks/refiner_scale.json``
under ``<preset>/sigma<s>[-holes<h>[-widen<w>][-coarse]]-seed<n>``, one per refiner, so that refiners can be
measured in processes side by side and reported together (``--report``).  Every number is synthetic, never an
FPHA number.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks.localise import measure_sensor, refuse_own_benchmark, store

OUT = Path(__file__).with_name("refiner_scale.json")
CHANGES = ("as rendered", "scene 15 % nearer, smaller", "scene 10 % farther, larger", "camera 50 mm nearer",
           "wider shadows", "speckle", "holes on the skin (stress)")
AVERAGES = {"size-averaged": CHANGES[:3],
            "hole-averaged": ("as rendered", "wider shadows", "speckle", "holes on the skin (stress)")}


class Variant(NamedTuple):
    """A refiner screened: the preset's config with ``scale_sigma``, ``hole_share``, ``hole_widen`` and
    ``hole_fine`` replaced by these."""

    sigma: float
    holes: float = 0.0
    widen: float = 1.0
    fine: bool = True

    def _parts(self, space: str) -> list[str]:
        """What names it: sigma; the hole share, unless 0; then the widening, unless 1, and "coarse" when the fine
        stage is trained without holes."""
        named = [("sigma", self.sigma)]
        if self.holes:
            named += [("holes", self.holes)] + ([("widen", self.widen)] if self.widen != 1 else [])
        return [f"{name}{space}{value:g}" for name, value in named] + (["coarse"] if self.holes and not self.fine else [])

    def key(self, seed: int) -> str:
        """Its record's key for the refiner of ``seed``."""
        return "-".join(self._parts("")) + f"-seed{seed}"

    def label(self) -> str:
        return ", ".join(self._parts(" "))

    def config(self, preset_name: str):
        """The refiner config it names (a ValueError names a bad value)."""
        from handfuse.localise import REFINE_PRESETS

        return replace(REFINE_PRESETS[preset_name][0], scale_sigma=float(self.sigma), hole_share=float(self.holes),
                       hole_widen=float(self.widen), hole_fine=bool(self.fine))


def measure(preset_name: str, v: Variant, seed: int, dev_seeds=(1, 2), every: int = 6, progress: bool = True) -> dict:
    """Train or load the refiner of ``seed`` of variant ``v`` and measure it on each dev benchmark (:data:`CHANGES`);
    the record is stored in :data:`OUT` and returned."""
    from handfuse.config import get_preset
    from handfuse.fpha import FPHA
    from handfuse.localise import train_refiner
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread

    preset = get_preset(preset_name)
    cfg = v.config(preset_name)
    start = time.perf_counter()
    refiner, fitted = train_refiner(FPHA(ensure_synthetic(preset_name)), preset, seed, progress=progress, refine=cfg)
    trained = time.perf_counter() - start
    record = {"note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
              "preset": preset_name, "sigma": float(v.sigma), "holes": float(v.holes),
              "widen": float(v.widen), "hole_fine": bool(v.fine), "seed": seed, "refiner_run": fitted.run_dir,
              "val": fitted.val, "every": every, "dev_seeds": list(dev_seeds), "train_seconds": trained}
    with one_thread():
        for dev in dev_seeds:
            record[f"dev{dev}"] = measure_sensor(preset, dev, refiner, every, changes=CHANGES, progress=progress)
    record["seconds"] = time.perf_counter() - start
    store(preset_name, v.key(seed), record, OUT)
    return record


def measure_pose(preset_name: str, v: Variant, seed: int, hpe_run: Path, dev_seeds=(1, 2), every: int = 6,
                 pose_every: int = 3, progress: bool = True) -> dict:
    """The pose error of a finished plain HPE pre-training (``hpe_run``) on crops around the refined centres of
    the refiner of a stored record (that of ``seed`` of variant ``v``: the very run it measured), and around the
    true centres, on
    every ``pose_every``-th test sequence of each dev benchmark, the frames as rendered; added to the refiner's
    stored record (measured with ``every``: measure it first) under ``pose``, and returned."""
    from tqdm.auto import tqdm

    from benchmarks.localise import load_hpe, predict_joints
    from handfuse.cache import fill_lost
    from handfuse.config import get_preset
    from handfuse.fpha import FPHA
    from handfuse.localise import load_refiner, locate_sequence
    from handfuse.metrics import mean_joint_error
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread
    from handfuse.preprocess import centre_from_joints

    preset = get_preset(preset_name)
    record = stored(preset_name, [v], [seed], dev_seeds, every)[(v, seed)]
    refiner = load_refiner(record["refiner_run"])
    if refiner is None:
        raise ValueError(f"{record['refiner_run']}: the refiner {v.key(seed)} measured is gone")
    hpe = load_hpe(Path(hpe_run))
    pose = {"hpe_run": str(hpe_run), "every": pose_every, "frames_as": "as rendered"}
    with one_thread():
        for dev in dev_seeds:
            fpha = FPHA(ensure_synthetic(preset_name, dev))
            found, truth, joints_true = [], [], []
            for ref in tqdm(fpha.test[::pose_every], desc=f"pose, dev {dev}", unit="seq", disable=not progress):
                joints = fpha.read_skeleton(ref)
                depths = [fpha.read_depth(ref, t) for t in range(len(joints))]
                centres = locate_sequence(depths, refiner=refiner).centres
                lost = [t for t in range(len(centres)) if not np.all(np.isfinite(centres[t]))]
                found.append(predict_joints(hpe, depths, fill_lost(centres, lost), preset.preprocess))
                truth.append(predict_joints(hpe, depths, centre_from_joints(joints).astype(np.float32), preset.preprocess))
                joints_true.append(joints)
            true = np.concatenate(joints_true)
            pose[f"dev{dev}"] = {"frames": int(len(true)), "depth_centre_mm": mean_joint_error(np.concatenate(found), true),
                                 "true_centre_mm": mean_joint_error(np.concatenate(truth), true)}
    record["pose"] = pose
    store(preset_name, v.key(seed), record, OUT)
    return record


def stored(preset_name: str, variants, seeds, dev_seeds, every: int, changes=()) -> dict:
    """The stored records of every (variant, seed), measured as asked (with ``changes`` among others); a
    ValueError names those missing."""
    everything = json.loads(OUT.read_text()).get(preset_name, {}) if OUT.is_file() else {}
    records, missing = {}, []
    for v in variants:
        for seed in seeds:
            r = everything.get(v.key(seed))
            if (r is None or r["every"] != every or not set(dev_seeds) <= set(r["dev_seeds"])
                    or any(c not in r[f"dev{d}"] for d in dev_seeds for c in changes)):
                missing.append(v.key(seed))
            else:
                records[(v, seed)] = r
    if missing:
        raise ValueError(f"{OUT}: no record for {missing} (every {every}, dev seeds {list(dev_seeds)}); measure them first")
    return records


def report(records: dict, variants, seeds, dev_seeds) -> str:
    """Markdown: per change (those every record has), pooled over the dev benchmarks, each variant's refined mean
    centre error per seed, its off-hand share, and its difference from the first variant's, paired by seed (95 % t)."""

    def per_seed(v, changes, field="mean_mm"):
        return np.array([np.mean([records[(v, s)][f"dev{d}"][c]["tracker+comref"][field]
                                  for d in dev_seeds for c in changes]) for s in seeds])

    common = [c for c in CHANGES if all(c in r[f"dev{d}"] for r in records.values() for d in dev_seeds)]
    rows = [(c, (c,)) for c in common] + [(name, cs) for name, cs in AVERAGES.items() if set(cs) <= set(common)]
    first = variants[0].label()
    head = " | ".join(f"{v.label()}: mean (mm) per seed; off hand" for v in variants)
    diffs = " | ".join(f"{v.label()} - {first}" for v in variants[1:])
    lines = [f"Refined mean centre error, dev benchmarks {list(dev_seeds)} pooled, seeds {list(seeds)} (synthetic):",
             "", f"| change | {head} | {diffs} |", "|---" * 2 * len(variants) + "|"]
    for name, changes in rows:
        lines.append(_row(name, variants, lambda v: per_seed(v, changes),
                          lambda v: f"; {per_seed(v, changes, 'off_hand_pct').mean():.2f} %"))
    if all(all(f"dev{d}" in r.get("pose", {}) for d in dev_seeds) for r in records.values()):
        lines += pose_rows(records, variants, seeds, dev_seeds)
    val = "; ".join(f"{v.label()}: " + " / ".join(f"{records[(v, n)]['val']['error_mm']:.2f}" for n in seeds)
                    for v in variants)
    lines += ["", f"Validation error of each refiner from perturbed true centres (mm, per seed): {val}"]
    return "\n".join(lines)


def _row(name: str, variants, per_seed, suffix=lambda v: "") -> str:
    """One table row: each variant's per-seed values (``per_seed(v)``, then ``suffix(v)``), then each variant's
    difference from the first, paired by seed, with its 95 % half-width (or said to have none: one seed)."""
    from handfuse.metrics import mean_ci95

    cells = [" / ".join(f"{x:.2f}" for x in per_seed(v)) + suffix(v) for v in variants]
    for v in variants[1:]:
        mean, half = mean_ci95(per_seed(v) - per_seed(variants[0]))
        cells.append(f"{mean:+.2f} ± {half:.2f}" if np.isfinite(half) else f"{mean:+.2f} (one seed: no interval)")
    return f"| {name} | " + " | ".join(cells) + " |"


def pose_rows(records: dict, variants, seeds, dev_seeds) -> list[str]:
    """The table's rows of the pose error (mm, frames pooled over the dev benchmarks) on refined and on true
    centres, per seed, and each variant's difference from the first, paired by seed (95 % t)."""

    def per_seed(v, field):
        out = []
        for s in seeds:
            pose = records[(v, s)]["pose"]
            frames = np.array([pose[f"dev{d}"]["frames"] for d in dev_seeds])
            out.append(np.dot(frames, [pose[f"dev{d}"][field] for d in dev_seeds]) / frames.sum())
        return np.array(out)

    return [_row(name, variants, lambda v: per_seed(v, field))
            for name, field in (("pose error, refined centres", "depth_centre_mm"),
                                ("pose error, true centres", "true_centre_mm"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refiner_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu"])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.08],
                        help="RefineConfig.scale_sigma values; the first is the reference (default 0 0.08)")
    parser.add_argument("--holes", type=float, nargs="+", default=[0.0],
                        help="RefineConfig.hole_share values, each with every sigma (default 0)")
    parser.add_argument("--widen", type=float, nargs="+", default=[1.0],
                        help="RefineConfig.hole_widen values, each with every hole share but 0 (default 1)")
    parser.add_argument("--coarse-only", action="store_true",
                        help="holes in the first stage's training crops only (RefineConfig.hole_fine = False)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="refiner seeds (default 0 1 2)")
    parser.add_argument("--dev-seeds", type=int, nargs="+", default=[1, 2], help="dev benchmarks' generator seeds")
    parser.add_argument("--every", type=int, default=6, help="every N-th test sequence (default 6)")
    parser.add_argument("--pose-hpe", type=Path, default=None, metavar="RUN",
                        help="a finished plain HPE pre-training (hpe-none-*): also measure its pose error on crops"
                             " around each refiner's centres")
    parser.add_argument("--pose-every", type=int, default=3, help="with --pose-hpe, every N-th test sequence (default 3)")
    parser.add_argument("--report", action="store_true", help="only report the stored records")
    args = parser.parse_args(argv)
    from handfuse.config import get_preset

    variants = list(dict.fromkeys(Variant(sigma, holes, widen if holes else 1.0, not (holes and args.coarse_only))
                                  for sigma in args.sigmas for holes in args.holes for widen in args.widen))
    if args.every < 1 or args.pose_every < 1:
        parser.error(f"--every and --pose-every must be whole numbers >= 1, got {args.every} and {args.pose_every}")
    if args.pose_hpe is not None and not (args.pose_hpe / "best.pt").is_file():
        parser.error(f"--pose-hpe: {args.pose_hpe} holds no finished HPE run (no best.pt)")
    try:
        for dev in args.dev_seeds:
            refuse_own_benchmark(get_preset(args.preset), dev)
        for v in variants:
            v.config(args.preset)
    except ValueError as e:
        parser.error(f"--dev-seeds / --sigmas / --holes / --widen: {e}")
    if not args.report:
        for v in variants:
            for seed in args.seeds:
                try:  # a refiner measured as asked already is not measured again
                    stored(args.preset, [v], [seed], args.dev_seeds, args.every, CHANGES)
                except ValueError:
                    measure(args.preset, v, seed, args.dev_seeds, args.every)
                if args.pose_hpe is not None:
                    measure_pose(args.preset, v, seed, args.pose_hpe, args.dev_seeds, args.every, args.pose_every)
    try:
        records = stored(args.preset, variants, args.seeds, args.dev_seeds, args.every)
    except ValueError as e:
        parser.error(str(e))
    print(report(records, variants, args.seeds, args.dev_seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
