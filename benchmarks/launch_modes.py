"""Three ways to cut kernel launches, timed on the same fixed-shape steps in one process (issue 24:
"torch.compile(mode='reduce-overhead') or CUDA graphs, whichever measures better").

    python -m benchmarks.launch_modes [--preset paper] [--device cuda] [--kinds hpe hpe_eval baseline]
                                      [--modes eager graphs compile reduce-overhead] [--steps 20] [--json FILE]

``--json`` appends one line per row as it is done, so a run cut short by a timeout keeps its rows.

Modes:

* ``eager``: what ``fit`` runs without options;
* ``graphs``: handfuse's own CUDA graphs (``--train graphs=true``, :mod:`handfuse.graphs`);
* ``compile``: ``torch.compile`` in its default mode (``--train compile=true``);
* ``reduce-overhead``: ``torch.compile(mode="reduce-overhead")``, inductor's kernels replayed as CUDA graphs.

Kinds (fresh models, random inputs of the preset's shapes, bf16 autocast on CUDA, as
:func:`benchmarks.gpu_runs.make_step` builds them): ``hpe`` (a pre-training step), ``hpe_eval``
(inference on one evaluation batch) and ``baseline`` (a fine-tuning step; the compiled modes compile
the HPE call over every frame, which is what ``graphs`` captures there).

Each row gives milliseconds per step after the warm-up, the warm-up's seconds (compiling or
capturing happens there) and the loss after the timed steps.  A mode that fails (a capture or a
compile error) gives a row with its error, and the others still run.  ``--backend eager`` compiles
with TorchDynamo's eager backend instead of inductor (no C++ or Triton compiler needed, and no
``mode``): what the tests use to run this module on CPU, where no timing here means anything.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from .gpu_runs import _sync, make_step

KINDS = ("hpe", "hpe_eval", "baseline")
MODES = ("eager", "graphs", "compile", "reduce-overhead")
WARMUP = 3


def compile_options(mode: str, backend: str) -> dict | None:
    """``torch.compile``'s keyword arguments for ``mode`` (None for the modes that do not compile)."""
    if mode not in ("compile", "reduce-overhead"):
        return None
    if backend != "inductor":
        return {"backend": backend}
    return {"mode": "default" if mode == "compile" else mode}


def eval_step(preset, device: torch.device, mode: str, options: dict | None):
    """(step, items): inference of a fresh HPE on one evaluation batch, as ``evaluate`` runs it."""
    from handfuse import graphs
    from handfuse.models.hpe import HPE
    from handfuse.tasks import HPETask
    from handfuse.train import autocast

    torch.manual_seed(0)
    model = HPE(preset.hpe)
    model.init_pca(torch.randn(256, 21, 3) * 0.3)
    model.to(device).eval()
    if device.type == "cuda" or model.channels_last_safe:
        model.to_channels_last()
    B, S = HPETask.eval_batch, preset.preprocess.crop  # the evaluation batch of HPE pre-training
    x = torch.randn(B, 1, S, S, device=device).clamp(-1, 1)
    on = mode == "graphs" and graphs.active(True, device)
    run = torch.compile(model, **options) if options is not None else model

    def step():
        with torch.inference_mode(), autocast(device, True, cache=not on):
            out = graphs.infer(model, x) if on else run(x)["joints"]
        return out.float().square().mean()
    return step, B


def build(kind: str, preset, device: torch.device, mode: str, backend: str):
    options = compile_options(mode, backend)
    if kind == "hpe_eval":
        return eval_step(preset, device, mode, options)
    return make_step(kind, preset, device, graphed=mode == "graphs", compile_options=options)


def time_row(kind: str, preset, device: torch.device, mode: str, backend: str, steps: int) -> dict:
    row = {"kind": kind, "mode": mode}
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        step, items = build(kind, preset, device, mode, backend)
        for _ in range(WARMUP):
            step()
        _sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        _sync(device)
        row.update(ms_per_step=(time.perf_counter() - t0) / steps * 1e3, warmup_s=warm, items_per_step=items,
                   loss=float(loss), peak_memory_gib=(torch.cuda.max_memory_allocated(device) / 2**30
                                                     if device.type == "cuda" else None))
    except Exception as e:  # noqa: BLE001 (reported in the row; the other modes still run)
        row["error"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        torch._dynamo.reset()  # each compiled row starts cold, as a fresh run would
    return row


def run(preset: str = "paper", device: str = "cuda", kinds=KINDS, modes=MODES, steps: int = 20,
        backend: str = "inductor", on_row=None) -> dict:
    """Every (kind, mode) row, and per kind the fastest mode that ran; ``on_row(row)`` is called as
    each row is done (so that a run cut short by a timeout keeps what it measured)."""
    from handfuse.config import get_preset

    dev, cfg = torch.device(device), get_preset(preset)
    rows = []
    for k in kinds:
        for m in modes:
            rows.append(time_row(k, cfg, dev, m, backend, steps))
            if on_row is not None:
                on_row(rows[-1])
    best = {}
    for k in kinds:
        ok = [r for r in rows if r["kind"] == k and "error" not in r]
        if ok:
            best[k] = min(ok, key=lambda r: r["ms_per_step"])["mode"]
    return {"preset": preset, "device": device, "backend": backend, "steps": steps, "rows": rows, "fastest": best,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="inductor", help="torch.compile's backend (eager: tests, no compiler)")
    ap.add_argument("--json", default=None, help="append one JSON line per row here, as each is done")
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error(f"--steps {a.steps}: at least 1")
    def report(r: dict) -> None:
        what = f"{r['kind']:9s} {r['mode']:16s}"
        if "error" in r:
            print(f"{what} error: {r['error']}", flush=True)
        else:
            print(f"{what} {r['ms_per_step']:8.2f} ms/step  warm-up {r['warmup_s']:6.1f} s  loss {r['loss']:.4f}", flush=True)
        if a.json:
            with open(a.json, "a") as f:  # one line per row as it is done
                f.write(json.dumps({"preset": a.preset, "device": a.device, "backend": a.backend, **r}) + "\n")

    out = run(a.preset, a.device, a.kinds, a.modes, a.steps, a.backend, on_row=report)
    print("fastest:", ", ".join(f"{k} {m}" for k, m in out["fastest"].items()), flush=True)


if __name__ == "__main__":
    main()
