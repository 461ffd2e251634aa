"""The action recogniser's input, chosen on the validation split: true poses *and* predicted ones.

    python -m benchmarks.har_input [--preset cpu] [--seeds 3] [--out benchmarks/har_input.json]

The look-alike pairs of the synthetic benchmark differ only by a finger articulation, so an input
that reads the articulation itself (the hand's joint angles, ``HARConfig(frame="angles")``) tells
them apart better from true poses.  But the workbook's recogniser reads the pose estimator's
predictions, where a 15 mm joint error is a large angle error.  So each candidate is scored on the
validation split twice: on true poses, and on the predictions of the preset's pre-trained FiLM HPE
fed w_eq (what the untrained chain reads); per seed, the HPE and every recogniser are pre-trained
through the workbook's runs (``handfuse.standalone.pretrain``), the recogniser on true poses.

Candidates (``benchmarks.tuning.lookalike_variants``): the preset's recogniser; the hand frame and the
joint angles with the preset's training; the joint angles with dropout 0.5 for 150 whole epochs (``01``'s
articulation reader, ``handfuse.standalone.ARTICULATION``); and the camera's joints beside the joint
angles, trained the same way.  Printed and written: per candidate the accuracy and the look-alike
within-pair accuracy on each input, mean ± 95 % half-width over seeds, and the paired difference
against the preset's.  **The test split is never read.**  The numbers are synthetic.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import PoseSequenceDataset
from handfuse.fpha import FPHA
from handfuse.metrics import mean_ci95
from handfuse.paths import ensure_synthetic
from handfuse.report import machine_info
from handfuse.standalone import lookalike_scores, predicted_sequences, pretrain, splits

from .tuning import lookalike_variants

METRICS = ("true_accuracy", "true_within_pair", "predicted_accuracy", "predicted_within_pair")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/har_input.json")
    args = ap.parse_args()
    P = get_preset(args.preset)
    fpha = FPHA(ensure_synthetic(args.preset))
    cache = get_cache(fpha, P.preprocess)
    variants = lookalike_variants(P)
    found = {name: {m: [] for m in METRICS} for name in variants}
    for seed in range(args.seeds):
        val = splits(fpha, P, seed)["val"]
        hpe, _ = pretrain(fpha, P, "hpe", {"film": P.film, "seed": seed}, cache=cache)
        poses = {"true": PoseSequenceDataset(fpha, val), "predicted": predicted_sequences(hpe, cache, val)}
        for name, V in variants.items():
            har, _ = pretrain(fpha, V, "har", {"attention": False, "seed": seed}, cache=cache)
            for source, ds in poses.items():
                acc, within = lookalike_scores(har, ds)
                found[name][f"{source}_accuracy"].append(100 * acc)
                found[name][f"{source}_within_pair"].append(100 * within)
    ref = found[next(iter(variants))]
    report = {"preset": args.preset, "seeds": list(range(args.seeds)), "split": "validation (the test split is never read)",
              "data": "synthetic", "machine": machine_info(),
              "candidates": {name: {m: {"mean": list(mean_ci95(v)), "per_seed": v,
                                        "minus_preset": list(mean_ci95(np.subtract(v, ref[m])))}
                                    for m, v in rows.items()} for name, rows in found.items()}}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"[synthetic, {args.preset} preset, validation split only, seeds {report['seeds']}] (%: mean ± 95 % half-width;"
          " in brackets, minus the preset's)")
    print(f"  {'candidate':48s}" + "".join(f"{m:>30s}" for m in METRICS))
    for name, rows in report["candidates"].items():
        cells = [f"{r['mean'][0]:5.1f} ± {r['mean'][1]:4.1f} ({r['minus_preset'][0]:+5.1f} ± {r['minus_preset'][1]:4.1f})"
                 for r in rows.values()]
        print(f"  {name:48s}" + "".join(f"{c:>30s}" for c in cells))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
