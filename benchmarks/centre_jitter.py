"""Does jittering the crop centres in fine-tuning make the trained pose estimator tolerate a depth centre?

    python -m benchmarks.centre_jitter [--preset cpu] [--jitter 0 10] [--seeds 3] [--dev-seeds 1 2]

Pre-training augments every crop (:mod:`handfuse.augment`, centre shifts of 10 mm per axis among them),
but fine-tuning sees whole sequences on ground-truth centres, and on the test split the trained
baseline's pose error from depth centres is a larger multiple of its ground-truth-centred one than
the pre-trained estimator's.  ``Preset.fuse_jitter_mm`` moves every training frame's crop centre by
a random shift in fine-tuning (:func:`handfuse.augment.jitter_centres`).  For each jitter and seed
this fine-tunes the baseline from the study's own pre-trained models of that seed (trained here if
missing), selecting the epoch on the validation split, and scores it on

* the validation split (ground-truth centres);
* the dev benchmarks, the test splits of the benchmarks generated with ``--dev-seeds`` (never the
  study's test split; their scenes and subjects no model here was trained on), cropped around the
  ground-truth centre and around the depth centre of the preset's localiser (its refinement trained
  on the preset's own benchmark, as the study's), with the ratio of the two.

It also says where the depth centre's cost comes from: on each dev benchmark, the frames binned by
their centre error, with each bin's share of the frames and of the excess pose error (depth-centred
minus ground-truth-centred, per frame) of seed 0's pre-trained pose estimator.

Differences are paired by seed against the first jitter, with 95 % t-intervals.  The test split is
never read (the validation split stands in for it in the fine-tuning, ``benchmarks.tuning._no_test``).
Runs go to ``runs/tuning/`` (or ``$HANDFUSE_RUNS/tuning``); a finished run is reused.  Writes
``benchmarks/centre_jitter.json``.  The numbers are synthetic, never FPHA numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.tuning import _no_test
from handfuse import finetune as ft
from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import FrameDataset, SequenceDataset
from handfuse.fpha import FPHA
from handfuse.metrics import mean_ci95
from handfuse.paths import REPO, ensure_synthetic
from handfuse.pool import one_thread
from handfuse.report import machine_info
from handfuse.runs import runs_dir, weights_digest
from handfuse.standalone import pretrain_localiser, splits
from handfuse.train import fit, run_digest

OUT = REPO / "benchmarks" / "centre_jitter.json"
BINS_MM = (0, 5, 10, 15, 20, 30, 50, 80, float("inf"))  # centre-error bins of the breakdown


def dev_sets(P, refiner, devs: dict[int, FPHA]) -> dict[str, SequenceDataset]:
    """``dev<N>-gt`` and ``dev<N>-depth``: the test split of generator seed N's benchmark ``devs[N]``
    around either centre."""
    sets = {}
    for g, dev in devs.items():
        sets[f"dev{g}-gt"] = SequenceDataset(get_cache(dev, P.preprocess, sequences=dev.test), dev.test)
        depth = get_cache(dev, replace(P.preprocess, centre="depth"), sequences=dev.test, refiner=refiner)
        sets[f"dev{g}-depth"] = SequenceDataset(depth, dev.test)
    return sets


def frame_errors(hpe, frames: FrameDataset, batch: int = 512) -> np.ndarray:
    """(N,) mean joint error (mm) of ``hpe`` (fed w_eq) on every frame of ``frames``, in its order."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            b = frames.batch(np.arange(i, min(i + batch, len(frames))))
            pred = hpe(b["depth"], None)["joints"].float() * frames.half_cube + b["centre"][:, None]
            out.append((pred - b["joints_mm"]).norm(dim=-1).mean(-1).numpy())
    return np.concatenate(out)


def breakdown(hpe, gt: FrameDataset, depth: FrameDataset) -> list[dict]:
    """Per centre-error bin (:data:`BINS_MM`): frames, their share, the mean excess pose error of
    ``hpe`` on ``depth``'s crops (centred from depth) over ``gt``'s (the same frames on ground-truth
    centres), and the bin's share of all the excess."""
    hpe = hpe.eval()
    excess = frame_errors(hpe, depth) - frame_errors(hpe, gt)
    err = np.linalg.norm(depth.cache.centres[depth.rows] - depth.cache.centres_gt[depth.rows], axis=1)
    out = []
    for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:]):
        m = (err >= lo) & (err < hi)
        out.append({"centre_error_mm": [lo, hi], "frames": int(m.sum()), "share_of_frames": float(m.mean()),
                    "excess_mm": float(excess[m].mean()) if m.any() else 0.0,
                    "share_of_excess": float(excess[m].sum() / excess.sum())})
    return out


def fine_tune(fpha, P, cache, seed: int, sets: dict) -> dict:
    """The baseline fine-tuned with ``P.fuse_jitter_mm`` from seed ``seed``'s pre-trained models, without
    the test split: its validation and dev scores and its one-thread seconds."""
    cfg = ft.resolved_config("baseline", P, {})
    models = ft.pretrained(fpha, P, seed, cfg.attention, cfg.film, "cpu", cache)
    config = {"fusion": asdict(cfg), "tuning": True, "fuse_jitter_mm": P.fuse_jitter_mm,
              "pretrained_weights": {k: weights_digest(r) for k, r in models.results.items()}}
    run = runs_dir() / "tuning" / f"centre-jitter-{run_digest(config)}-seed{seed}"
    model = ft.build_method("baseline", models, P, cfg, seed)
    data = {k: SequenceDataset(cache, refs) for k, refs in _no_test(splits(fpha, P, seed)).items()}
    with one_thread():
        r = fit(model, ft.FusionTask(data, jitter_mm=P.fuse_jitter_mm), replace(P.train_fuse, seed=seed), run, config)
    scores = ft.evaluate(model, sets)
    row = {"val_error_mm": r.val["error_mm"], "val_accuracy": 100 * r.val["accuracy"], "seconds": r.seconds}
    for name, s in scores.items():
        row[f"{name}_error_mm"], row[f"{name}_accuracy"] = s["error_mm"], 100 * s["accuracy"]
    for name in sets:
        if name.endswith("-depth"):
            dev = name[: -len("-depth")]
            row[f"{dev}_ratio"] = row[f"{name}_error_mm"] / row[f"{dev}-gt_error_mm"]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--jitter", type=float, nargs="+", default=[0.0, 10.0], help="stds in mm; the first is the reference")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dev-seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    P0, seeds = get_preset(args.preset), list(range(args.seeds))
    if P0.synth.seed in args.dev_seeds:
        ap.error(f"--dev-seeds: {P0.synth.seed} is the preset's own benchmark, whose test split is the study's")
    fpha = FPHA(ensure_synthetic(args.preset))
    cache = get_cache(fpha, P0.preprocess)
    refiner = pretrain_localiser(fpha, P0, seed=0)[1].run_dir
    devs = {g: FPHA(ensure_synthetic(args.preset, g)) for g in args.dev_seeds}
    sets = dev_sets(P0, refiner, devs)
    hpe = ft.pretrained(fpha, P0, 0, film=P0.film, cache=cache).hpe
    split = {f"dev{g}": breakdown(hpe, *(FrameDataset(sets[f"dev{g}-{c}"].cache, dev.test) for c in ("gt", "depth")))
             for g, dev in devs.items()}
    rows = {j: [fine_tune(fpha, replace(P0, fuse_jitter_mm=j), cache, s, sets) for s in seeds] for j in args.jitter}
    ref = args.jitter[0]
    report = {"preset": args.preset, "seeds": seeds, "dev_seeds": args.dev_seeds, "machine": machine_info(),
              "data": "synthetic: the validation split and the dev benchmarks' test splits, never the study's test",
              "reference_jitter_mm": ref, "excess_by_centre_error": split, "jitter": {}}
    for j, per_seed in rows.items():
        report["jitter"][f"{j:g}"] = {key: {"mean": list(mean_ci95([r[key] for r in per_seed])),
                                            "per_seed": [r[key] for r in per_seed],
                                            "minus_reference": list(mean_ci95([r[key] - q[key]
                                                                               for r, q in zip(per_seed, rows[ref])]))}
                                      for key in per_seed[0]}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"[synthetic, {args.preset} preset] where the depth centre's cost comes from (seed 0's pre-trained HPE):")
    for name, bins in split.items():
        for b in bins:
            lo, hi = b["centre_error_mm"]
            print(f"  {name} centre error {lo:g}-{hi:g} mm: {b['frames']:5d} frames ({100 * b['share_of_frames']:4.1f} %), "
                  f"excess {b['excess_mm']:6.2f} mm, {100 * b['share_of_excess']:5.1f} % of the excess")
    print(f"[synthetic, {args.preset} preset; validation split and dev benchmarks {args.dev_seeds}; seeds {seeds}; "
          f"differences paired against jitter {ref:g} mm]")
    for j, row in report["jitter"].items():
        print(f"jitter {j} mm")
        for key, v in row.items():
            (m, hw), (d, dhw) = v["mean"], v["minus_reference"]
            print(f"  {key:26s} {m:8.3f} ± {hw:6.3f}   minus the reference: {d:+.3f} ± {dhw:.3f}")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
