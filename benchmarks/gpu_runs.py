"""Training steps of every run type side by side: N worker processes on one device, each timing the
same run type at the same moment, with and without CUDA graphs (``TrainConfig.graphs``).

    python -m benchmarks.gpu_runs --workers 4 [--preset paper] [--device cuda] [--steps 10] --json FILE

Run types (fresh models, random inputs of the preset's shapes; a step is what ``fit`` runs per batch):
``hpe`` (pre-training, batch ``train_hpe.batch_size``), ``har`` (pre-training, ``train_har``), and
fine-tuning ``baseline``, ``feedback`` (the headline's p_eq) and ``ensemble`` (``train_fuse``, full
sequences of the preset's length, activation checkpointing off).  Each worker warms up, waits for
the others at a barrier, times ``--steps`` steps, and reports seconds per step and its peak memory
(``torch.cuda.max_memory_reserved``).  On CPU the graphs rows are the eager ones (the option is a
no-op there), which is what ``--device cpu`` is for: testing this module.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

KINDS = ("hpe", "har", "baseline", "feedback", "ensemble")
WARMUP = 3


def frames_per_sequence(preset) -> int:
    return max(1, round(preset.synth.fps * preset.synth.duration_s))


def make_step(kind: str, preset, device: torch.device, graphed: bool, compile_options: dict | None = None):
    """(step, items): ``step()`` runs one training step of run type ``kind`` and returns its loss;
    ``items`` is how many frames (HPE) or sequences (the rest) one step trains on.  With
    ``compile_options`` (``torch.compile``'s keyword arguments; not with ``graphed``) the HPE's forward
    is compiled, and for fine-tuning the calls that ``graphed`` would capture."""
    from benchmarks.fusion_speed import fresh_method
    from handfuse import graphs
    from handfuse.methods import headline
    from handfuse.models.har import PoseLSTM
    from handfuse.models.hpe import HPE
    from handfuse.train import adam, autocast

    torch.manual_seed(0)
    on = graphs.active(graphed, device)
    T = frames_per_sequence(preset)
    S = preset.preprocess.crop
    if kind == "hpe":
        B = preset.train_hpe.batch_size
        model = HPE(preset.hpe)
        model.init_pca(torch.randn(256, 21, 3) * 0.3)
        model.to(device)
        if device.type == "cuda" or model.channels_last_safe:
            model.to_channels_last()
        batch = {"depth": torch.randn(B, 1, S, S, device=device).clamp(-1, 1),
                 "joints": torch.randn(B, 21, 3, device=device) * 0.3}
        run = model if compile_options is None else torch.compile(model, **compile_options)
        forward = lambda b: model.loss(run(b["depth"]), b["joints"])  # noqa: E731
        items = B
    elif kind == "har":
        B = preset.train_har.batch_size
        model = PoseLSTM(preset.har).to(device)
        batch = {"joints": torch.randn(B, T, 21, 3, device=device), "mask": torch.ones(B, T, dtype=torch.bool, device=device),
                 "label": torch.randint(0, 45, (B,), device=device)}
        forward = lambda b: model.loss(model(b["joints"], b["mask"]), b["label"], b["mask"])  # noqa: E731
        items = B
    else:
        B = preset.train_fuse.batch_size
        options = {**headline(kind), "film": preset.film, "activation_checkpoint": 0}
        model, _ = fresh_method(preset, kind, options)
        model.to(device)
        batch = {"depth": torch.randn(B, T, 1, S, S, device=device).clamp(-1, 1),
                 "centre": torch.randn(B, T, 3, device=device) * 50 + 400,
                 "joints": torch.randn(B, T, 21, 3, device=device) * 0.3,
                 "mask": torch.ones(B, T, dtype=torch.bool, device=device),
                 "label": torch.randint(0, 45, (B,), device=device)}
        forward = lambda b: model.loss(model(b["depth"], b["centre"], b["mask"]), b)  # noqa: E731
        items = B
    model.train()
    opt = adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, capturable=on)

    def eager(b):
        with autocast(device, True, cache=not on):
            loss = forward(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if on and kind == "hpe":  # a whole step captured, as fit does for HPE pre-training
        runner = graphs.StepGraphs(model, opt, eager)
        return (lambda: runner(batch)), items
    if on and kind != "har":  # the HPE calls over every frame, as fit does for fine-tuning
        for module, name in graphs.fixed_shape_calls(model):
            graphs.graph_calls(module, name)
    if compile_options is not None and kind not in ("hpe", "har"):  # the same calls, compiled
        for module, name in graphs.fixed_shape_calls(model):
            setattr(module, name, torch.compile(getattr(module, name), **compile_options))
    return (lambda: eager(batch).detach()), items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(rank: int, args: dict, barrier, queue) -> None:
    """One worker: every (kind, graphs) in turn, timed between barriers so that all workers run the same one."""
    from handfuse.config import get_preset

    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    preset = get_preset(args["preset"])
    if args.get("shrink"):  # tests: the preset's models on a few frames
        preset = replace(preset, synth=replace(preset.synth, fps=2.0, duration_s=2.0))
    for kind in args["kinds"]:
        for graphed in args["graphs"]:
            row, started = {"rank": rank, "kind": kind, "graphs": graphed}, False
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                step, items = make_step(kind, preset, device, graphed)
                for _ in range(WARMUP):
                    step()
                _sync(device)
                barrier.wait()
                started = True
                t0 = time.perf_counter()
                for _ in range(args["steps"]):
                    loss = step()
                _sync(device)
                seconds = (time.perf_counter() - t0) / args["steps"]
                row.update(seconds_per_step=seconds, items_per_step=items, loss=float(loss),
                           peak_memory_gib=(torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None))
                del step
            except Exception as e:  # noqa: BLE001 (reported, and the barrier still reached)
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                if not started:
                    barrier.wait()
            queue.put(row)
            barrier.wait()  # the next row starts together


def run(workers: int, preset: str = "paper", device: str = "cuda", kinds=KINDS, graphs=(False, True), steps: int = 10,
        threads: int = 1, shrink: bool = False) -> dict:
    """Time every (kind, graphs) with ``workers`` processes at once: per row, the aggregate throughput
    (items/s summed over workers), the mean seconds per step and the summed peak memory."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    args = {"preset": preset, "device": device, "kinds": list(kinds), "graphs": list(graphs), "steps": steps,
            "threads": threads, "shrink": shrink}
    procs = [ctx.Process(target=worker, args=(r, args, barrier, queue)) for r in range(workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    rows = [queue.get() for _ in range(workers * len(kinds) * len(graphs))]
    for p in procs:
        p.join()
    out = []
    for kind in kinds:
        for g in graphs:
            mine = [r for r in rows if r["kind"] == kind and r["graphs"] == g]
            ok = [r for r in mine if "error" in r] == []
            row = {"kind": kind, "graphs": g, "workers": workers}
            if ok:
                row.update(seconds_per_step=sum(r["seconds_per_step"] for r in mine) / len(mine),
                           items_per_s=sum(r["items_per_step"] / r["seconds_per_step"] for r in mine),
                           items_per_step=mine[0]["items_per_step"],
                           peak_memory_gib=(sum(r["peak_memory_gib"] for r in mine) if device.startswith("cuda") else None))
            else:
                row["error"] = next(r["error"] for r in mine if "error" in r)
            out.append(row)
    return {"workers": workers, "preset": preset, "device": device, "steps": steps, "wall_s": time.perf_counter() - t0,
            "rows": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--graphs", choices=["both", "on", "off"], default="both")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--shrink", action="store_true", help="short sequences (tests)")
    ap.add_argument("--json", default=None, help="append one JSON line per worker count here")
    a = ap.parse_args(argv)
    graphs = {"both": (False, True), "on": (True,), "off": (False,)}[a.graphs]
    for n in a.workers:
        r = run(n, a.preset, a.device, a.kinds, graphs, a.steps, a.threads, a.shrink)
        for row in r["rows"]:
            what = f"{row['kind']:9s} graphs={'on ' if row['graphs'] else 'off'} workers={n}"
            if "error" in row:
                print(f"{what}  error: {row['error']}", flush=True)
            else:
                mem = f", peak {row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else ""
                print(f"{what}  {row['seconds_per_step'] * 1e3:8.1f} ms/step  {row['items_per_s']:9.1f} items/s{mem}",
                      flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
