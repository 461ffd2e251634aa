"""The cpu preset's choices, re-made on the validation split only, over several seeds.

    python -m benchmarks.tuning [--preset cpu] [--seeds 2] [--only hpe har fuse] [--out benchmarks/tuning.json]

Each choice of ``handfuse/config.py``'s cpu preset is set against its alternative:

* the HPE's schedule: the preset's epochs with cosine decay against 16 at a constant rate;
* the HPE's size: the original's layout at half its widths (the preset) against its full widths,
  both one block per group;
* fine-tuning: batch 16 at 2e-4, cosine, the preset's epochs against the original's batch 4 at
  3e-5, 6 epochs at a constant rate;
* the HAR's input: the joints in the camera's frame (the original) against the hand's own frame and its joint angles
  (``HARConfig.frame``), on validation accuracy and on the look-alike groups' within-group accuracy.

``benchmarks/tuning.json`` was written when the preset pre-trained for 10 epochs and fine-tuned for 3
with the original stem; the later trims of the epochs and the stem are measured by
``python -m benchmarks.stem``.

Every run trains on the training side of the action split and is selected and scored on the
validation split held out from it (whole sequences, per class); **the test split is never read**:
each task's ``test`` split is the validation split, so ``fit``'s closing evaluation scores
validation again.  Runs are side by side, one thread each (``handfuse.pool``), in their own runs
folder (``runs/tuning/``, or ``$HANDFUSE_RUNS/tuning``; a finished run is reused).  The script prints each variant's mean over
the seeds and the paired difference against the preset's choice with its 95 % interval, and writes
them to ``--out``.  The numbers are synthetic, never FPHA numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from handfuse.cache import get_cache
from handfuse.config import Preset, get_preset
from handfuse.datasets import PoseSequenceDataset, SequenceDataset
from handfuse.finetune import FusionTask, Pretrained, build_method, jitter_record, resolved_config
from handfuse.fpha import FPHA
from handfuse.metrics import group_accuracy, mean_ci95
from handfuse.models.har import FRAMES
from handfuse.models.registry import har_entry, hpe_entry
from handfuse.paths import REPO, ensure_synthetic, runs_dir
from handfuse.pool import map_jobs, one_thread
from handfuse.report import machine_info
from handfuse.standalone import initial_hpe, splits
from handfuse.skeleton import ACTION_INDEX
from handfuse.synth.actions import LOOKALIKE_GROUPS
from handfuse.tasks import HARTask, HPETask
from handfuse.train import fit, load_checkpoint, run_digest


def _hpe_label(P: Preset) -> str:
    h, t = P.hpe, P.train_hpe
    return f"widths {list(h.widths)}, {t.schedule}, {t.epochs} epochs"


def _fuse_label(P: Preset) -> str:
    t = P.train_fuse
    return f"batch {t.batch_size}, lr {t.lr:g}, {t.schedule}, {t.epochs} epochs"


def hpe_variants(P: Preset) -> dict[str, Preset]:
    """The preset's HPE (first) and its alternatives: a constant rate for 16 epochs; the original's widths."""
    variants = [P, replace(P, train_hpe=replace(P.train_hpe, epochs=16, schedule="constant")),
                replace(P, hpe=replace(P.hpe, stem_channels=32, widths=(64, 128, 256, 256), fc=1024, min_mid=1))]
    return {("preset: " if v is P else "") + _hpe_label(v): v for v in variants}


def fuse_variants(P: Preset) -> dict[str, Preset]:
    """The preset's fine-tuning (first) and the original's (batch 4 at 3e-5, constant, 6 epochs)."""
    original = replace(P, train_fuse=replace(P.train_fuse, batch_size=4, lr=3e-5, schedule="constant", epochs=6,
                                             patience=6))
    return {"preset: " + _fuse_label(P): P, "the original's: " + _fuse_label(original): original}


def _har_label(P: Preset) -> str:
    h, t = P.har, P.train_har
    return (f"{h.frame} frame, dropout {h.dropout:g}, {t.epochs} epochs"
            + (f" (patience {t.patience})" if t.patience < t.epochs else " (no early stop)")
            + (f", jitter {h.jitter_mm:g} mm" if h.jitter_mm else "")
            + (f", rotation {h.rotate_deg:g} deg" if h.rotate_deg else ""))


def har_variants(P: Preset) -> dict[str, Preset]:
    """The preset's HAR (first); every other input (``HARConfig.frame``: camera, hand, angles) with the
    preset's training; and the angles with dropout 0.5 for 150 whole epochs (what the look-alike pairs
    need on true poses).  ``benchmarks.har_input`` scores the same candidates on predicted poses too."""
    variants = [P] + [replace(P, har=replace(P.har, frame=f)) for f in FRAMES if f != P.har.frame]
    variants.append(replace(P, har=replace(P.har, frame="angles", dropout=0.5),
                            train_har=replace(P.train_har, epochs=150, patience=150)))
    return {("preset: " if v is P else "") + _har_label(v): v for v in variants}


def lookalike_variants(P: Preset) -> dict[str, Preset]:
    """The candidates of ``benchmarks.har_input``: the preset's HAR (first); the hand frame and the
    hand's joint angles with the preset's training; then, with dropout 0.5 for 150 whole epochs, the
    joint angles (``01``'s articulation reader, ``handfuse.standalone.ARTICULATION``) and the camera's
    joints beside them (the best input of both kinds on scene v1)."""
    from handfuse.standalone import ARTICULATION, ARTICULATION_EPOCHS

    long = replace(P.train_har, epochs=ARTICULATION_EPOCHS, patience=ARTICULATION_EPOCHS)
    variants = [P] + [replace(P, har=replace(P.har, frame=f)) for f in ("hand", "angles")]
    variants += [replace(P, har=replace(P.har, **{**ARTICULATION, "frame": f}), train_har=long)
                 for f in (ARTICULATION["frame"], "camera+angles")]
    return {("preset: " if v is P else "") + _har_label(v): v for v in variants}


def _no_test(refs: dict) -> dict:
    """The splits with the validation split standing in for the test split: the test split is never read."""
    return {"train": refs["train"], "val": refs["val"], "test": refs["val"]}


def _opened(root: str, P: Preset):
    fpha = FPHA(root)
    return fpha, get_cache(fpha, P.preprocess, progress=False)


PARTS = {"hpe": ("preprocess", "hpe", "augment", "train_hpe", "film"), "har": ("har", "train_har"),
         "fuse": ("preprocess", "hpe", "augment", "train_hpe", "film", "har", "train_har", "train_fuse")}


def _folder(kind: str, P: Preset, seed: int) -> str:
    """``runs/tuning/<kind>-<8 hex>-seed<seed>``, named by the parts of the preset that kind of run depends on."""
    parts = {name: asdict(v) if hasattr(v, "__dataclass_fields__") else v
             for name in PARTS[kind] for v in [getattr(P, name)]}
    return str(runs_dir() / "tuning" / f"{kind}-{run_digest({'kind': kind, **parts})}-seed{seed}")


def train_hpe(job: dict) -> dict:
    """One HPE pre-training (FiLM in the preset's placement, fed w_eq, as the study pre-trains it)."""
    P, seed = job["preset"], job["seed"]
    fpha, cache = _opened(job["root"], P)
    cfg_model = replace(hpe_entry("deepprior").config(P), film=P.film)
    task = HPETask(cache, _no_test(splits(fpha, P, seed)), augment=P.augment)
    net = initial_hpe(task, cfg_model, seed)
    if net.channels_last_safe:
        net.to_channels_last()
    with one_thread():
        r = fit(net, task, replace(P.train_hpe, seed=seed), job["run"], {"hpe": asdict(cfg_model), "tuning": True},
                progress=False)
    return {"val_error_mm": r.val["error_mm"], "seconds": r.seconds, "epochs": len(r.history), "run": r.run_dir}


def train_har(job: dict) -> dict:
    P, seed = job["preset"], job["seed"]
    fpha, _ = _opened(job["root"], P)
    data = {k: PoseSequenceDataset(fpha, refs) for k, refs in _no_test(splits(fpha, P, seed)).items()}
    torch.manual_seed(seed)
    net = har_entry("lstm").build(har_entry("lstm").config(P))
    task = HARTask(data)
    with one_thread():
        r = fit(net, task, replace(P.train_har, seed=seed), job["run"], {"har": asdict(P.har), "tuning": True},
                progress=False)
        val = task.outputs(net, "val")
    groups = [[ACTION_INDEX[a] for a in g] for g in LOOKALIKE_GROUPS]
    look = group_accuracy(np.stack(val["logits"]), [data["val"][i]["label"] for i in range(len(data["val"]))], groups)
    return {"val_accuracy": r.val["accuracy"], "val_lookalike_within": look["within_group"],
            "val_lookalike_accuracy": look["accuracy"], "seconds": r.seconds, "run": r.run_dir}


def fine_tune(job: dict) -> dict:
    """The baseline fine-tuned from the seed's tuning HPE and HAR (the preset's own variants)."""
    P, seed = job["preset"], job["seed"]
    fpha, cache = _opened(job["root"], P)
    hpe = hpe_entry("deepprior").build(replace(hpe_entry("deepprior").config(P), film=P.film))
    hpe.load_state_dict(load_checkpoint(Path(job["hpe_run"]) / "best.pt")["model"])
    har = har_entry("lstm").build(har_entry("lstm").config(P))
    har.load_state_dict(load_checkpoint(Path(job["har_run"]) / "best.pt")["model"])
    cfg = resolved_config("baseline", P, {})
    model = build_method("baseline", Pretrained(hpe, hpe, har, {}), P, cfg, seed)
    data = {k: SequenceDataset(cache, refs) for k, refs in _no_test(splits(fpha, P, seed)).items()}
    with one_thread():
        r = fit(model, FusionTask(data, jitter_mm=P.fuse_jitter_mm), replace(P.train_fuse, seed=seed), job["run"],
                {"fusion": asdict(cfg), "tuning": True, **jitter_record(P)}, progress=False)
    return {"val_loss": r.val["loss"], "val_error_mm": r.val["error_mm"], "val_accuracy": r.val["accuracy"],
            "seconds": r.seconds}


def _run(job: dict) -> dict:
    return {"hpe": train_hpe, "har": train_har, "fuse": fine_tune}[job["kind"]](job)


def _summary(results: dict[str, list[dict]], metric: str, scale: float = 1.0) -> dict:
    """Per variant: mean and 95 % half-width over seeds, and the paired difference against the first."""
    names = list(results)
    ref = [scale * r[metric] for r in results[names[0]]]
    out = {}
    for name in names:
        values = [scale * r[metric] for r in results[name]]
        out[name] = {"mean": list(mean_ci95(values)), "per_seed": values,
                     "minus_preset": list(mean_ci95([v - b for v, b in zip(values, ref)])),
                     "one_thread_seconds": float(np.mean([r["seconds"] for r in results[name]]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=["hpe", "har", "fuse"], default=["hpe", "har", "fuse"],
                    help="the choices to re-make (default: all; fine-tuning needs the preset's HPE and HAR runs)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "tuning.json"))
    args = ap.parse_args()
    P, seeds = get_preset(args.preset), list(range(args.seeds))
    root = str(ensure_synthetic(args.preset))
    get_cache(FPHA(root), P.preprocess)  # built once, here, before the workers read it
    fuses = fuse_variants(P) if "fuse" in args.only else {}

    def wanted(kind: str, variants: dict[str, Preset]) -> dict[str, Preset]:
        """Every variant of a choice being re-made; else the preset's own, when fine-tuning starts from it."""
        return variants if kind in args.only else dict(list(variants.items())[:1]) if fuses else {}

    hpes, hars = wanted("hpe", hpe_variants(P)), wanted("har", har_variants(P))
    jobs = [{"kind": "hpe", "variant": v, "preset": p, "seed": s, "root": root, "run": _folder("hpe", p, s)}
            for v, p in hpes.items() for s in seeds]
    jobs += [{"kind": "har", "variant": v, "preset": p, "seed": s, "root": root, "run": _folder("har", p, s)}
             for v, p in hars.items() for s in seeds]
    first, first_har = next(iter(hpes), None), next(iter(hars), None)  # the preset's own: fine-tuning starts from them
    preset_hpe = {j["seed"]: i for i, j in enumerate(jobs) if j["kind"] == "hpe" and j["variant"] == first}
    har = {j["seed"]: i for i, j in enumerate(jobs) if j["kind"] == "har" and j["variant"] == first_har}
    after = [[] for _ in jobs]
    for v, p in fuses.items():
        for s in seeds:
            jobs.append({"kind": "fuse", "variant": v, "preset": p, "seed": s, "root": root,
                         "run": _folder("fuse", p, s), "hpe_run": jobs[preset_hpe[s]]["run"],
                         "har_run": jobs[har[s]]["run"]})
            after.append([preset_hpe[s], har[s]])
    done = map_jobs(_run, jobs, describe=lambda j: f"{j['kind']} {j['variant']} seed {j['seed']}", desc="tuning",
                    after=after)
    by = {}
    for j, r in zip(jobs, done):
        by.setdefault(j["kind"], {}).setdefault(j["variant"], []).append(r)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    report = {**previous, "preset": args.preset, "seeds": seeds,
              "data": "synthetic (the preset's benchmark; validation split only)", "machine": machine_info()}
    if "hpe" in args.only:
        report["hpe"] = _summary(by["hpe"], "val_error_mm")
    if "har" in args.only:
        report["har"] = {m: _summary(by["har"], m, 100.0)
                         for m in ("val_accuracy", "val_lookalike_within", "val_lookalike_accuracy")}
    if fuses:
        report["finetune"] = {"val_loss": _summary(by["fuse"], "val_loss"),
                              "val_error_mm": _summary(by["fuse"], "val_error_mm"),
                              "val_accuracy": _summary(by["fuse"], "val_accuracy", 100.0)}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"[synthetic, {args.preset} preset, validation split only, seeds {seeds}]")
    tables = ([("HPE pre-training: validation error", report["hpe"], "mm")] if "hpe" in args.only else []) + \
        ([(f"HAR on true poses: {m}", report["har"][m], "%") for m in report["har"]] if "har" in args.only else []) + \
        ([(f"fine-tuning (baseline): validation {m}", report["finetune"][m], u)
          for m, u in (("val_loss", ""), ("val_error_mm", "mm"), ("val_accuracy", "%"))] if fuses else [])
    for title, table, unit in tables:
        print(title)
        for name, row in table.items():
            (m, hw), (d, dhw) = row["mean"], row["minus_preset"]
            print(f"  {name:55s} {m:8.3f} ± {hw:6.3f} {unit:2s}  minus the preset's: {d:+.3f} ± {dhw:.3f}"
                  f"  ({row['one_thread_seconds']:.0f} s one thread)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
