"""Peak memory of one fine-tuning step, with and without activation checkpointing of the pose estimator.

``python -m benchmarks.memory [--batch 4] [--frames 120] [--chunk N] [--steps 2] [--threads 1] [--out benchmarks/memory.json]``
(also the ``memory`` stage of ``python -m benchmarks``, which is not among its default stages).

For ``baseline`` and ``feedback`` (the headline options: p_eq 0.95, FiLM where the ``paper``
preset puts it, ``both``, so that the conv trunk runs inside the step-by-step unroll too), each
with ``FusionConfig.activation_checkpoint`` off and at ``--chunk`` frames (default: the paper
preset's), a fresh process builds the method from freshly initialised paper-size networks
(channels_last, as training runs them), an Adam optimiser with the preset's fine-tuning settings
and one batch of ``--batch`` whole sequences of ``--frames`` frames of 128-pixel crops (random
values: memory and time do not depend on them), then runs ``--steps`` fine-tuning steps (forward,
joint loss, backward, Adam step, as :func:`handfuse.train.fit` does).  Reported per row:

* ``rss_before_gib``: the process's resident memory just before the first step (torch, the
  models, the optimiser, the batch), and ``peak_before_gib``, its peak so far;
* ``peak_rss_gib``: the process's peak resident memory (``getrusage``'s ``ru_maxrss``) after
  the first step, nothing subtracted: what the machine must hold; ``step_gib`` is that minus
  ``rss_before_gib``;
* ``cuda_peak_gib``: ``torch.cuda.max_memory_allocated`` over the first step, when it runs on a GPU;
* ``step_s`` and ``step_cpu_s``: the wall-clock and CPU seconds of every step (the first pays
  one-time set-up costs), and ``time_vs_off`` and ``cpu_vs_off``, the median of the later steps
  over that of the same method without checkpointing: what the recomputation costs in speed.

On CPU the steps run on ``--threads`` threads, one by default, as the workbook's fine-tuning runs
(:func:`handfuse.pool.one_thread`); one thread's CPU seconds also hold up on a machine shared with
other work, where two threads' wall-clock and CPU times (spinning included) do not.

Each row runs in a process of its own, so that no row inherits another's heap.  The glibc settings
of the environment (the Makefile exports two, docs/benchmarks.md) are recorded with the numbers:
they decide whether freed memory goes back to the system.  Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

GIB = 2**30
OUT = Path(__file__).with_name("memory.json")
METHODS = ("baseline", "feedback")
MALLOC = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def _rss() -> int:
    """The resident memory of this process now, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    """The peak resident memory of this process so far, in bytes (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def paper_models():
    """Freshly initialised paper-size models as fine-tuning starts from them: one FiLM-conditioned HPE
    (FiLM where the paper preset puts it) serving as both ``hpe`` and ``hpe_film``, as
    :func:`handfuse.finetune.pretrained` does, with a fitted PCA prior, in channels_last; the LSTM."""
    import torch

    from handfuse.config import get_preset
    from handfuse.finetune import Pretrained
    from handfuse.models.har import PoseLSTM
    from handfuse.models.hpe import HPE

    P = get_preset("paper")
    torch.manual_seed(0)
    hpe = HPE(replace(P.hpe, film=P.film))
    hpe.init_pca(torch.randn(256, 21, 3) * 0.3)
    hpe.to_channels_last()
    return Pretrained(hpe, hpe, PoseLSTM(P.har), {})


def measure(method: str, chunk: int, batch: int, frames: int, steps: int, device: str, threads: int = 1) -> dict:
    """One row, in this process: see the module docstring."""
    import torch

    from handfuse.config import get_preset
    from handfuse.methods import build, headline, method_config
    from handfuse.train import adam, autocast

    if device == "cpu":
        torch.set_num_threads(threads)
    P = get_preset("paper")
    dev = torch.device(device)
    options = {"film": P.film, **headline(method), "activation_checkpoint": chunk}
    model = build(method, paper_models(), P.preprocess.cube_mm / 2, method_config(method, **options)).to(dev)
    opt = adam([p for p in model.parameters() if p.requires_grad], lr=P.train_fuse.lr, weight_decay=P.train_fuse.weight_decay)
    g = torch.Generator().manual_seed(0)
    S, half = P.preprocess.crop, P.preprocess.cube_mm / 2
    centre = torch.randn(batch, frames, 3, generator=g) * 20 + torch.tensor([0.0, 0.0, 400.0])
    joints = torch.randn(batch, frames, 21, 3, generator=g) * 0.3
    data = {"depth": torch.rand(batch, frames, 1, S, S, generator=g) * 2 - 1, "centre": centre,
            "mask": torch.ones(batch, frames, dtype=torch.bool), "joints": joints,
            "joints_mm": joints * half + centre[:, :, None], "label": torch.randint(0, 45, (batch,), generator=g)}
    data = {k: v.to(dev) for k, v in data.items()}
    model.train()
    torch.manual_seed(0)  # the p_eq coin
    row = {"method": method, "activation_checkpoint": chunk, "options": options, "batch": batch, "frames": frames,
           "crop": S, "device": device, "threads": torch.get_num_threads(), "pid": os.getpid(),
           "rss_before_gib": _rss() / GIB, "peak_before_gib": _peak() / GIB, "step_s": [], "step_cpu_s": []}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    for step in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast(dev, True):  # bf16 on CUDA, as fit; nothing on CPU
            loss = model.loss(model(data["depth"], data["centre"], data["mask"]), data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del loss
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        row["step_s"].append(time.perf_counter() - t0)
        row["step_cpu_s"].append(time.process_time() - c0)
        if step == 0:
            row["peak_rss_gib"] = _peak() / GIB
            row["step_gib"] = row["peak_rss_gib"] - row["rss_before_gib"]
            if dev.type == "cuda":
                row["cuda_peak_gib"] = torch.cuda.max_memory_allocated(dev) / GIB
    row["peak_rss_all_steps_gib"] = _peak() / GIB
    return row


def run(batch: int = 4, frames: int = 120, chunk: int | None = None, steps: int = 2, device: str | None = None,
        methods: tuple[str, ...] = METHODS, threads: int = 1) -> dict:
    """Every method with checkpointing off and on, each row in a fresh ``python -m benchmarks.memory --row``."""
    from handfuse.config import get_preset
    from handfuse.report import machine_info

    chunk = get_preset("paper").activation_checkpoint if chunk is None else chunk
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for method in methods:
        for c in (0, chunk):
            spec = json.dumps({"method": method, "chunk": c, "batch": batch, "frames": frames, "steps": steps,
                               "device": device, "threads": threads})
            done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--row", spec],
                                  capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
            if done.returncode != 0:  # killed for memory, say: name the row and show why
                raise RuntimeError(f"benchmarks.memory row {spec} exited with {done.returncode}:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for r in rows:
        off = next(o for o in rows if o["method"] == r["method"] and o["activation_checkpoint"] == 0)
        later = lambda x, key: statistics.median(x[key][1:] or x[key])  # noqa: E731 (warm steps)
        r["time_vs_off"] = later(r, "step_s") / later(off, "step_s")
        r["cpu_vs_off"] = later(r, "step_cpu_s") / later(off, "step_cpu_s")
        r["peak_vs_off"] = r["peak_rss_gib"] / off["peak_rss_gib"]
    return {"preset": "paper", "batch": batch, "frames": frames, "chunk": chunk, "steps": steps, "device": device,
            "malloc_env": {k: os.environ[k] for k in MALLOC if k in os.environ}, "machine": machine_info(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}


def report(r: dict) -> None:
    env = ", ".join(f"{k}={v}" for k, v in r["malloc_env"].items()) or "glibc defaults"
    print(f"peak memory of one fine-tuning step, paper-size networks, B{r['batch']} x T{r['frames']} x "
          f"{r['rows'][0]['crop']} px, {r['device']}, {r['rows'][0]['threads']} threads ({env})")
    cuda = any("cuda_peak_gib" in x for x in r["rows"])
    print(f"  {'method':9s} {'checkpoint':>10s} {'RSS before':>10s} {'peak RSS':>9s} {'step adds':>9s}"
          + (f" {'CUDA peak':>9s}" if cuda else "") + f" {'step s':>12s} {'CPU s':>12s} {'time x off':>10s} {'CPU x off':>9s}")
    for x in r["rows"]:
        ck = f"{x['activation_checkpoint']} fr" if x["activation_checkpoint"] else "off"
        times = "/".join(f"{t:.3g}" for t in x["step_s"])
        cpu = "/".join(f"{t:.3g}" for t in x["step_cpu_s"])
        print(f"  {x['method']:9s} {ck:>10s} {x['rss_before_gib']:8.2f} G {x['peak_rss_gib']:7.2f} G "
              f"{x['step_gib']:7.2f} G" + (f" {x.get('cuda_peak_gib', float('nan')):7.2f} G" if cuda else "")
              + f" {times:>12s} {cpu:>12s} {x['time_vs_off']:10.2f} {x['cpu_vs_off']:9.2f}")
    print("  target (issue 24): feedback at B4 x T120 x 128 px with checkpointing under 3 GiB peak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (the paper's fine-tuning: 4)")
    ap.add_argument("--frames", type=int, default=120, help="frames per sequence, every one valid")
    ap.add_argument("--chunk", type=int, default=None, help="frames per checkpointed chunk (default: the paper preset's)")
    ap.add_argument("--steps", type=int, default=2, help="steps per row; the peak is the first's, the time the later ones'")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda where available)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (the workbook's fine-tuning: 1)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row, in this process
    args = ap.parse_args()
    if args.row:
        spec = json.loads(args.row)
        row = measure(spec["method"], spec["chunk"], spec["batch"], spec["frames"], spec["steps"], spec["device"],
                      spec["threads"])
        print(json.dumps(row))
        return
    r = run(args.batch, args.frames, args.chunk, args.steps, args.device, tuple(args.methods), args.threads)
    report(r)
    Path(args.out).write_text(json.dumps(r, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
