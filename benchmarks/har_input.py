"""The action recogniser's input, chosen on the validation split: true poses *and* predicted ones.

    python -m benchmarks.har_input [--preset cpu] [--seeds 3] [--out benchmarks/har_input.json]

The look-alike pairs of the synthetic benchmark differ only by a finger articulation, so an input
that reads the articulation itself (the hand's joint angles, ``HARConfig(frame="angles")``) tells
them apart better from true poses.  But the workbook's recogniser reads the pose estimator's
predictions, where a 15 mm joint error is a large angle error.  So each candidate is scored on the
validation split twice: on true poses, and on the predictions of the preset's pre-trained FiLM HPE
fed w_eq (what the untrained chain reads); per seed, the HPE and every recogniser are pre-trained
through the workbook's runs (``handfuse.standalone.pretrain``), the recogniser on true poses.

Candidates: those of ``benchmarks.tuning --only har`` (``har_variants``): the preset's recogniser,
every other input with the preset's training, and the angles with dropout 0.5 for 150 whole epochs.  Printed and written: per candidate the accuracy and
the look-alike within-pair accuracy on each input, mean ± 95 % half-width over seeds, and the paired
difference against the preset's.  **The test split is never read.**  The numbers are synthetic.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import PoseSequenceDataset
from handfuse.fpha import FPHA
from handfuse.metrics import group_accuracy, mean_ci95
from handfuse.paths import ensure_synthetic
from handfuse.report import machine_info
from handfuse.skeleton import ACTION_INDEX
from handfuse.standalone import pretrain, splits
from handfuse.synth.actions import LOOKALIKE_GROUPS
from handfuse.tasks import HARTask, HPETask

from .tuning import har_variants

METRICS = ("true_accuracy", "true_within_pair", "predicted_accuracy", "predicted_within_pair")


def score(har, poses: PoseSequenceDataset, labels: list[int]) -> tuple[float, float]:
    """(accuracy, look-alike within-pair accuracy) of a recogniser on a validation dataset."""
    logits = np.stack(HARTask({"val": poses}).outputs(har, "val")["logits"])
    groups = [[ACTION_INDEX[a] for a in g] for g in LOOKALIKE_GROUPS]
    return float((logits.argmax(1) == np.asarray(labels)).mean()), group_accuracy(logits, labels, groups)["within_group"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/har_input.json")
    args = ap.parse_args()
    P = get_preset(args.preset)
    fpha = FPHA(ensure_synthetic(args.preset))
    cache = get_cache(fpha, P.preprocess)
    variants = har_variants(P)
    found = {name: {m: [] for m in METRICS} for name in variants}
    for seed in range(args.seeds):
        val = splits(fpha, P, seed)["val"]
        labels = [r.label for r in val]
        hpe, _ = pretrain(fpha, P, "hpe", {"film": P.film, "seed": seed}, cache=cache)
        task = HPETask(cache, {"val": val})
        frames = task.predict(hpe, "val")  # (N, 21, 3) mm, one sequence after the other
        ends = np.cumsum(cache.lengths[task.data["val"].seq_indices])
        poses = {"true": PoseSequenceDataset(fpha, val),
                 "predicted": PoseSequenceDataset.from_joints(np.split(frames, ends[:-1]), labels)}
        for name, V in variants.items():
            har, _ = pretrain(fpha, V, "har", {"attention": False, "seed": seed}, cache=cache)
            for source, ds in poses.items():
                acc, within = score(har, ds, labels)
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
