"""What the cpu preset's strided stem costs in accuracy, against the other ways to save the same time.

    python -m benchmarks.stem [--preset cpu] [--seeds 3] [--out benchmarks/stem.json]

The reproduction has to fit its time on 2 cores, and the pose estimator's training and scoring are
most of it.  DeepPrior++'s stem (a 5x5 conv on the whole crop, batch norm, then a 2x2 max-pool)
works on the full-size map, the largest of the network, and on CPU it is a large share of a step
(docs/benchmarks.md).  ``HPEConfig.stem_stride = 2`` convolves with
stride 2 instead and drops the pool (the same map size after it).  This script sets that against
the original stem and against the two other time savings at hand, fewer epochs:

* the original stem (conv + max-pool) with the preset's training;
* the strided stem, the preset's training;
* the original stem, 8 pre-training epochs instead of 10 (cosine over 8);
* the original stem, the fine-tuning for 2 epochs instead of 3 (cosine over 2);
* the strided stem and 8 pre-training epochs;
* the strided stem, 8 pre-training epochs and 2 fine-tuning epochs (what the cpu preset now does).

For each: the conditioned HPE pre-trained on w_eq and its oracle on the true action (their
validation errors and the headroom between them), and the baseline fine-tuned from the w_eq one
(validation error, accuracy, joint loss), with the one-thread seconds of each.  Differences are
paired by seed against the original stem with the preset's training, with 95 % t-intervals.
Validation split only: each task's test split is the validation split (``benchmarks.tuning``'s
``_no_test``), so the test split is never read.  Runs go to ``runs/tuning/`` (or
``$HANDFUSE_RUNS/tuning``), side by side, one thread each; a finished run is reused.  The numbers
are synthetic, never FPHA numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks.tuning import _folder, _no_test, _opened, fine_tune, train_har
from handfuse.cache import get_cache
from handfuse.config import Preset, get_preset
from handfuse.fpha import FPHA
from handfuse.metrics import mean_ci95
from handfuse.models.registry import hpe_entry
from handfuse.paths import REPO, ensure_synthetic
from handfuse.pool import map_jobs, one_thread
from handfuse.report import machine_info
from handfuse.standalone import initial_hpe, splits
from handfuse.tasks import HPETask
from handfuse.train import fit

FEEDS = ("w_eq", "true")  # the HPE every method starts from, and its oracle


def variants(P: Preset) -> dict[str, Preset]:
    """The ways to train, by label; the first is the reference of every difference."""
    ten = replace(P, train_hpe=replace(P.train_hpe, epochs=10),  # the schedules before the trims
                  train_fuse=replace(P.train_fuse, epochs=3, patience=3))
    pooled = replace(ten, hpe=replace(P.hpe, stem_stride=1))
    strided = replace(ten, hpe=replace(P.hpe, stem_stride=2))
    return {
        "conv + max-pool stem (the original), 10 + 3 epochs": pooled,
        "strided stem, 10 + 3 epochs": strided,
        "conv + max-pool stem, 8 pre-training epochs": replace(pooled, train_hpe=replace(pooled.train_hpe, epochs=8)),
        "conv + max-pool stem, 2 fine-tuning epochs": replace(
            pooled, train_fuse=replace(pooled.train_fuse, epochs=2, patience=2)),
        "strided stem, 8 pre-training epochs": replace(strided, train_hpe=replace(strided.train_hpe, epochs=8)),
        "strided stem, 8 pre-training epochs, 2 fine-tuning epochs": replace(
            strided, train_hpe=replace(strided.train_hpe, epochs=8),
            train_fuse=replace(strided.train_fuse, epochs=2, patience=2)),
    }


def train_hpe(job: dict) -> dict:
    """One conditioned HPE (the preset's FiLM placement) pre-trained on ``job["feed"]``, validation only."""
    P, seed, feed = job["preset"], job["seed"], job["feed"]
    fpha, cache = _opened(job["root"], P)
    cfg_model = replace(hpe_entry("deepprior").config(P), film=P.film)
    task = HPETask(cache, _no_test(splits(fpha, P, seed)), augment=P.augment, feed=feed)
    net = initial_hpe(task, cfg_model, seed)
    if net.channels_last_safe:
        net.to_channels_last()
    with one_thread():
        r = fit(net, task, replace(P.train_hpe, seed=seed), job["run"],
                {"hpe": asdict(cfg_model), "feed": feed, "tuning": True}, progress=False)
    return {"val_error_mm": r.val["error_mm"], "seconds": r.seconds}


def _run(job: dict) -> dict:
    return {"hpe": train_hpe, "har": train_har, "fuse": fine_tune}[job["kind"]](job)


def _headroom(res, label: str, seeds: list[int]) -> list[float]:
    """Per seed: the w_eq HPE's validation error minus its oracle's."""
    return [res("hpe", label, "w_eq", s)["val_error_mm"] - res("hpe", label, "true", s)["val_error_mm"] for s in seeds]


def _paired(values: list[float], ref: list[float]) -> dict:
    return {"mean": list(mean_ci95(values)), "per_seed": values,
            "minus_reference": list(mean_ci95([v - r for v, r in zip(values, ref)]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "stem.json"))
    args = ap.parse_args()
    P, seeds = get_preset(args.preset), list(range(args.seeds))
    root = str(ensure_synthetic(args.preset))
    get_cache(FPHA(root), P.preprocess)  # built once, here, before the workers read it
    found = variants(P)
    jobs, at = [], {}

    def add(key, job, needs=()):
        at[key] = len(jobs)
        jobs.append(job)
        after.append([at[k] for k in needs])

    after: list[list[int]] = []
    for s in seeds:
        add(("har", s), {"kind": "har", "preset": P, "seed": s, "root": root, "run": _folder("har", P, s)})
    # one pre-training per distinct (HPE, its training, feed, seed): a fine-tuning-only variant shares one
    for label, V in found.items():
        for feed in FEEDS:
            for s in seeds:
                run = _folder("hpe", V, s) + ("" if feed == "w_eq" else f"-{feed}")
                if ("hpe", run) not in at:
                    add(("hpe", run), {"kind": "hpe", "preset": V, "seed": s, "feed": feed, "root": root, "run": run})
                at[("hpe", label, feed, s)] = at[("hpe", run)]
    for label, V in found.items():
        for s in seeds:
            hpe_run = jobs[at[("hpe", label, "w_eq", s)]]["run"]
            add(("fuse", label, s), {"kind": "fuse", "preset": V, "seed": s, "root": root, "run": _folder("fuse", V, s),
                                     "hpe_run": hpe_run, "har_run": jobs[at[("har", s)]]["run"]},
                needs=[("hpe", hpe_run), ("har", s)])
    done = map_jobs(_run, jobs, describe=lambda j: f"{j['kind']} seed {j['seed']}", desc="stem", after=after)
    res = lambda *key: done[at[key]]  # noqa: E731
    ref = next(iter(found))
    report = {"preset": args.preset, "seeds": seeds, "machine": machine_info(),
              "data": "synthetic (the preset's benchmark; validation split only)", "variants": {}}
    for label in found:
        row = {}
        for feed in FEEDS:
            row[f"hpe_{feed}_val_error_mm"] = _paired([res("hpe", label, feed, s)["val_error_mm"] for s in seeds],
                                                      [res("hpe", ref, feed, s)["val_error_mm"] for s in seeds])
        row["headroom_mm"] = _paired(_headroom(res, label, seeds), _headroom(res, ref, seeds))
        for m, scale in (("val_error_mm", 1.0), ("val_accuracy", 100.0), ("val_loss", 1.0)):
            row[f"baseline_{m}"] = _paired([scale * res("fuse", label, s)[m] for s in seeds],
                                           [scale * res("fuse", ref, s)[m] for s in seeds])
        row["one_thread_seconds"] = {
            "hpe_pretraining": float(np.mean([res("hpe", label, f, s)["seconds"] for f in FEEDS for s in seeds])),
            "fine_tuning": float(np.mean([res("fuse", label, s)["seconds"] for s in seeds]))}
        report["variants"][label] = row
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"[synthetic, {args.preset} preset, validation split only, seeds {seeds}; differences paired against "
          f"'{ref}']")
    for label, row in report["variants"].items():
        print(label)
        for key, v in row.items():
            if key == "one_thread_seconds":
                print(f"  one thread: pre-training {v['hpe_pretraining']:.0f} s, fine-tuning {v['fine_tuning']:.0f} s")
                continue
            (m, hw), (d, dhw) = v["mean"], v["minus_reference"]
            print(f"  {key:32s} {m:8.3f} ± {hw:6.3f}   minus the reference: {d:+.3f} ± {dhw:.3f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
