"""Benchmarks: ``python -m benchmarks [--stages data hpe]`` (or ``make bench``).

Prints a table and writes ``benchmarks/results.json`` (machine: CPU model and vector ISA,
torch version, threads, date; every stage also records the machine it ran on, since a stage
not re-run keeps its older results).  Each figure is the median of ``--repeats`` runs with the
spread (min-max); ratios are measured within this one process.

Stages: synthetic generation (frames/s, single process), PNG -> normalised crop
(frames/s), crop cache -> batch (frames/s) and their ratio, disk size per
preset, and the estimated generation time of each preset on this machine's
cores (frames / measured rate / workers), with the measured wall time of the
smoke preset.  ``hpe``: HPE inference and training against a matmul
(:mod:`benchmarks.hpe_speed`).  ``fusion``: fine-tuning throughput of every
fusion method against the baseline (:mod:`benchmarks.fusion_speed`).  ``pool``: fine-tuning
runs side by side, one thread each, against one after the other (:mod:`benchmarks.pool_speed`).  ``scaling``: how the
HPE's and every method's cost grows with sequence length and crop size, with
``figures/bench_scaling.png`` (:mod:`benchmarks.scaling`).  ``workflow``: HAR
training, data starvation of the training loops, widget latency and the last reproduction's
minutes (:mod:`benchmarks.workflow_speed`).  ``memory`` (not among the default stages: it runs
paper-size steps, which without checkpointing need more memory than the cpu preset's machines may
have): the peak memory of one fine-tuning step with and without activation checkpointing
(:mod:`benchmarks.memory`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from handfuse.cache import get_cache
from handfuse.config import PRESETS, SynthConfig, get_preset
from handfuse.datasets import FrameDataset
from handfuse.fpha import FPHA
from handfuse.report import machine_info as report_machine
from handfuse.preprocess import centre_from_joints, crop
from handfuse.skeleton import NUM_ACTIONS
from handfuse.synth import generate
from handfuse.synth.generate import sequence_refs, write_sequence

from .timing import timed


def rate(n: int, t: tuple[float, float, float]) -> dict:
    return {"per_s": n / t[0], "spread": [n / t[2], n / t[1]]}


def disk_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--stages", nargs="+", default=["data", "hpe", "fusion", "pool", "scaling", "workflow"],
                    choices=["data", "hpe", "fusion", "pool", "scaling", "workflow", "memory"])
    args = ap.parse_args()
    out = Path(args.out)
    if len(args.stages) > 1:  # each stage in a fresh process: one left the next slower (see isolated())
        for stage in args.stages:
            isolated(stage, args.repeats, out)
        return
    results: dict = json.loads(out.read_text()) if out.is_file() else {}  # keep stages not re-run
    results["machine"] = machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['isa']}), {machine['cores']} cores, torch {machine['torch']}, "
          f"{machine['threads']} threads")
    if "data" in args.stages:
        results["data"] = stamped(data_stages(args.repeats), machine)
        report(results["data"], results["machine"])
    if "hpe" in args.stages:
        from .hpe_speed import report as hpe_report
        from .hpe_speed import run as hpe_run

        results["hpe"] = stamped(hpe_run(args.repeats), machine)
        hpe_report(results["hpe"])
    if "fusion" in args.stages:
        from .fusion_speed import report as fusion_report
        from .fusion_speed import run as fusion_run

        results["fusion"] = stamped(fusion_run("cpu", repeats=args.repeats), machine)
        fusion_report(results["fusion"])
    if "pool" in args.stages:
        from .pool_speed import report as pool_report
        from .pool_speed import run as pool_run

        results["pool"] = stamped(pool_run("cpu", pairs=args.repeats), machine)
        pool_report(results["pool"])
    if "scaling" in args.stages:
        from .scaling import report as scaling_report
        from .scaling import run as scaling_run

        results["scaling"] = stamped(scaling_run("cpu", repeats=args.repeats), machine)
        scaling_report(results["scaling"])
    if "workflow" in args.stages:
        from .workflow_speed import report as workflow_report
        from .workflow_speed import run as workflow_run

        results["workflow"] = stamped(workflow_run("cpu", repeats=args.repeats), machine)
        workflow_report(results["workflow"])
    if "memory" in args.stages:
        from .memory import report as memory_report
        from .memory import run as memory_run

        results["memory"] = stamped(memory_run(), machine)
        memory_report(results["memory"])
    out.write_text(json.dumps(results, indent=2) + "\n")


def isolated(stage: str, repeats: int, out: Path) -> None:
    """Run one stage as ``python -m benchmarks --stages STAGE`` in its own process, which updates ``out``.
    Run after the data stage in one process, the cpu preset's HPE training measured far slower than in
    a process of its own (docs/benchmarks.md): what one stage leaves behind (threads, a fragmented
    heap) must not time the next."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "benchmarks", "--stages", stage, "--repeats", str(repeats), "--out", str(out)],
                   check=True, cwd=Path(__file__).resolve().parent.parent)


def machine_info() -> dict:
    """:func:`handfuse.report.machine_info` (CPU model, vector ISA, cores, torch, threads) and the date:
    ratios against the matmul depend on the CPU (a host with two 512-bit FMA units doubles the matmul
    rate, not that of the memory-bound layers)."""
    return {**report_machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


def stamped(stage: dict, machine: dict) -> dict:
    """A stage's results with the machine they were measured on (stages not re-run keep their own)."""
    return {**stage, "machine": machine}


def data_stages(repeats: int) -> dict:
    results: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="handfuse-bench-"))
    try:
        # 1. synthetic generation, one process, cpu-preset frame rate and resolution
        cfg = replace(get_preset("cpu").synth, subjects=1, reps=2)
        refs = sequence_refs(cfg)[0][:6]
        counter = iter(range(10**6))

        def gen():
            d = tmp / f"g{next(counter)}"
            return sum(write_sequence(d, cfg, r) for r in refs)

        n_gen = gen()
        t = timed(gen, repeats)
        results["synth_frames_per_s_1proc"] = rate(n_gen, t)

        # 2. a smoke tree for the decode / cache stages, timed end to end
        t0 = time.perf_counter()
        root = generate(tmp / "smoke", get_preset("smoke").synth, progress=False)
        results["smoke_generation_s"] = time.perf_counter() - t0
        fpha = FPHA(root)
        pre = get_preset("cpu").preprocess
        frames = [(r, t_) for r in fpha.train[:20] for t_ in range(fpha.num_frames(r))]
        joints = {r.key: fpha.read_skeleton(r) for r, _ in frames}

        def decode_and_crop():
            for r, t_ in frames:
                crop(fpha.read_depth(r, t_), centre_from_joints(joints[r.key][t_]), cube_mm=pre.cube_mm, size=pre.crop)

        t = timed(decode_and_crop, repeats)
        results["png_to_crop_frames_per_s"] = rate(len(frames), t)

        cache = get_cache(fpha, pre, cache_dir=tmp / "cache", progress=False)
        ds = FrameDataset(cache)
        rng = np.random.default_rng(0)
        batches = [rng.permutation(len(ds))[:64] for _ in range(50)]
        t = timed(lambda: [ds.batch(b) for b in batches], repeats)
        results["cache_to_batch_frames_per_s"] = rate(64 * len(batches), t)
        results["cache_vs_decode_ratio"] = results["cache_to_batch_frames_per_s"]["per_s"] / results["png_to_crop_frames_per_s"]["per_s"]

        # 3. disk and time per preset
        smoke_frames = sum(fpha.num_frames(r) for r in fpha.sequences)
        bytes_per_frame = disk_size(root) / smoke_frames
        per_frame_s = 1.0 / results["synth_frames_per_s_1proc"]["per_s"]
        workers = min(4, os.cpu_count() or 1)
        presets = {}
        for name, preset in PRESETS.items():
            n = expected_frames(preset.synth)
            presets[name] = {"frames": n, "disk_gb_est": n * bytes_per_frame / 1e9,
                             "generation_min_est": n * per_frame_s / workers / 60}
        presets["smoke"]["generation_min_measured"] = results["smoke_generation_s"] / 60
        presets["smoke"]["disk_gb_measured"] = disk_size(root) / 1e9
        results["presets"] = presets
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def expected_frames(cfg: SynthConfig) -> int:
    """Mean frames per sequence (uniform speed jitter keeps the mean duration) x sequences."""
    return int(round(max(4, cfg.duration_s * cfg.fps) * cfg.subjects * NUM_ACTIONS * cfg.reps))


def report(r: dict, m: dict) -> None:
    print(f"handfuse data benchmarks - {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, {m['date']}")
    for key in ("synth_frames_per_s_1proc", "png_to_crop_frames_per_s", "cache_to_batch_frames_per_s"):
        v = r[key]
        print(f"  {key:30s} {v['per_s']:10.1f}   (spread {v['spread'][0]:.1f}-{v['spread'][1]:.1f})")
    print(f"  {'cache vs decode ratio':30s} {r['cache_vs_decode_ratio']:10.1f}x  (target >= 20x)")
    print("  preset   frames   disk GB (est)   generation min (est, all cores)")
    for name, p in r["presets"].items():
        extra = f"  measured {p['generation_min_measured']:.2f} min, {p['disk_gb_measured']:.3f} GB" if "generation_min_measured" in p else ""
        print(f"  {name:7s} {p['frames']:7d}   {p['disk_gb_est']:8.2f}        {p['generation_min_est']:6.1f}{extra}")


if __name__ == "__main__":
    main()
