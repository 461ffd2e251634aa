"""Does the refiner's hand-size augmentation pay: ``python -m benchmarks.refiner_scale``.

The refiner (:mod:`handfuse.localise`) regresses millimetres in a metric cube, so a hand smaller or larger
than the synthetic subjects' costs it accuracy (``benchmarks.localise --sensor``).  This trains, or loads
when finished, the preset's refiner of each seed (``--seeds``) with each ``RefineConfig.scale_sigma``
(``--sigmas``; the first is the reference) on the preset's training split, and measures each on the test
sequences of the dev benchmarks (``--dev-seeds``, every ``--every``-th; never the study's test split) with
the frames as rendered, the scene 15 % nearer and smaller, 10 % farther and larger, the camera 50 mm nearer,
and wider shadows (:func:`benchmarks.localise.measure_sensor`).

It prints, per change and pooled over the dev benchmarks, each refiner's mean centre error and each sigma's
difference from the first, paired by seed (95 % t-interval over the seeds); "size-averaged" is the mean over
the frames as rendered, smaller and larger, the measure the preset's sigma was chosen on.  Records go to
``benchmarks/refiner_scale.json`` under ``<preset>/sigma<s>-seed<n>``, one per refiner, so that refiners can
be measured in processes side by side and reported together (``--report``).  Every number is synthetic,
never an FPHA number.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.localise import measure_sensor, refuse_own_benchmark, store

OUT = Path(__file__).with_name("refiner_scale.json")
CHANGES = ("as rendered", "scene 15 % nearer, smaller", "scene 10 % farther, larger", "camera 50 mm nearer",
           "wider shadows")
SIZES = CHANGES[:3]  # what "size-averaged" averages


def key(sigma: float, seed: int) -> str:
    return f"sigma{sigma:g}-seed{seed}"


def measure(preset_name: str, sigma: float, seed: int, dev_seeds=(1, 2), every: int = 6,
            progress: bool = True) -> dict:
    """Train or load the refiner of ``seed`` with ``scale_sigma = sigma`` and measure it on each dev
    benchmark (:data:`CHANGES`); the record is stored in :data:`OUT` and returned."""
    from handfuse.config import get_preset
    from handfuse.fpha import FPHA
    from handfuse.localise import REFINE_PRESETS, train_refiner
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread

    preset = get_preset(preset_name)
    cfg = replace(REFINE_PRESETS[preset_name][0], scale_sigma=float(sigma))
    start = time.perf_counter()
    refiner, fitted = train_refiner(FPHA(ensure_synthetic(preset_name)), preset, seed, progress=progress, refine=cfg)
    trained = time.perf_counter() - start
    record = {"note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
              "preset": preset_name, "sigma": float(sigma), "seed": seed, "refiner_run": fitted.run_dir,
              "val": fitted.val, "every": every, "dev_seeds": list(dev_seeds), "train_seconds": trained}
    with one_thread():
        for dev in dev_seeds:
            record[f"dev{dev}"] = measure_sensor(preset, dev, refiner, every, changes=CHANGES, progress=progress)
    record["seconds"] = time.perf_counter() - start
    store(preset_name, key(sigma, seed), record, OUT)
    return record


def stored(preset_name: str, sigmas, seeds, dev_seeds, every: int) -> dict:
    """The stored records of every (sigma, seed), measured as asked; a ValueError names those missing."""
    everything = json.loads(OUT.read_text()).get(preset_name, {}) if OUT.is_file() else {}
    records, missing = {}, []
    for sigma in sigmas:
        for seed in seeds:
            r = everything.get(key(sigma, seed))
            if r is None or r["every"] != every or not set(dev_seeds) <= set(r["dev_seeds"]):
                missing.append(key(sigma, seed))
            else:
                records[(sigma, seed)] = r
    if missing:
        raise ValueError(f"{OUT}: no record for {missing} (every {every}, dev seeds {list(dev_seeds)}); measure them first")
    return records


def report(records: dict, sigmas, seeds, dev_seeds) -> str:
    """Markdown: per change, pooled over the dev benchmarks, each sigma's refined mean centre error per seed,
    its off-hand share, and its difference from the first sigma's, paired by seed (95 % t)."""
    from handfuse.metrics import mean_ci95

    def per_seed(sigma, changes, field="mean_mm"):
        return np.array([np.mean([records[(sigma, s)][f"dev{d}"][c]["tracker+comref"][field]
                                  for d in dev_seeds for c in changes]) for s in seeds])

    head = " | ".join(f"sigma {s:g}: mean (mm) per seed; off hand" for s in sigmas)
    diffs = " | ".join(f"sigma {s:g} - {sigmas[0]:g}" for s in sigmas[1:])
    lines = [f"Refined mean centre error, dev benchmarks {list(dev_seeds)} pooled, seeds {list(seeds)} (synthetic):",
             "", f"| change | {head} | {diffs} |", "|---" * 2 * len(sigmas) + "|"]
    for name, changes in [(c, (c,)) for c in CHANGES] + [("size-averaged", SIZES)]:
        cells = [" / ".join(f"{v:.2f}" for v in per_seed(s, changes)) + f"; {per_seed(s, changes, 'off_hand_pct').mean():.2f} %"
                 for s in sigmas]
        for s in sigmas[1:]:
            mean, half = mean_ci95(per_seed(s, changes) - per_seed(sigmas[0], changes))
            cells.append(f"{mean:+.2f} ± {half:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    val = "; ".join(f"sigma {s:g}: " + " / ".join(f"{records[(s, n)]['val']['error_mm']:.2f}" for n in seeds) for s in sigmas)
    lines += ["", f"Validation error of each refiner from perturbed true centres (mm, per seed): {val}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refiner_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu"])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.08],
                        help="RefineConfig.scale_sigma values; the first is the reference (default 0 0.08)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="refiner seeds (default 0 1 2)")
    parser.add_argument("--dev-seeds", type=int, nargs="+", default=[1, 2], help="dev benchmarks' generator seeds")
    parser.add_argument("--every", type=int, default=6, help="every N-th test sequence (default 6)")
    parser.add_argument("--report", action="store_true", help="only report the stored records")
    args = parser.parse_args(argv)
    from handfuse.config import get_preset
    from handfuse.localise import REFINE_PRESETS

    if args.every < 1:
        parser.error(f"--every must be a whole number >= 1, got {args.every}")
    try:
        for dev in args.dev_seeds:
            refuse_own_benchmark(get_preset(args.preset), dev)
        for sigma in args.sigmas:
            replace(REFINE_PRESETS[args.preset][0], scale_sigma=sigma)
    except ValueError as e:
        parser.error(f"--dev-seeds / --sigmas: {e}")
    if not args.report:
        for sigma in args.sigmas:
            for seed in args.seeds:
                measure(args.preset, sigma, seed, args.dev_seeds, args.every)
    try:
        records = stored(args.preset, args.sigmas, args.seeds, args.dev_seeds, args.every)
    except ValueError as e:
        parser.error(str(e))
    print(report(records, args.sigmas, args.seeds, args.dev_seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
