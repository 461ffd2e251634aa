"""HPE speed against the machine: frames/s and achieved GFLOP/s as a fraction of a large fp32 matmul
measured in the same process (timings here are noisy, so only ratios within one run are compared).

Sizes: the ``cpu`` preset's HPE (64-px crops, one bottleneck block per group) and the ``paper`` one
(128-px crops, five blocks per group, the original's network).  Memory formats: contiguous and
channels_last; ``--compile`` adds torch.compile (off by default: it was no faster here, docs/benchmarks.md).
Training counts 3x the forward FLOPs (forward + backward).  Each timed run is ``STEPS`` calls (a
single step of the cpu preset's net is too short to time alone).

    python -m benchmarks.hpe_speed [--repeats 5] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from handfuse.config import get_preset
from handfuse.models.hpe import HPE, count_flops, frozen_for_inference
from handfuse.train import adam

from .timing import timed


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _, _ = timed(lambda: a @ b, repeats, warmup=2)
    return 2 * n**3 / t / 1e9


STEPS = 4  # calls per timed run: one step of a small model lasts tens of ms, too short to time alone on a shared VM


def _steps(fn):
    def run():
        for _ in range(STEPS):
            fn()
    return run


def hpe_rates(preset: str, channels_last: bool, compile_: bool, repeats: int, batch: int = 64) -> dict:
    torch.manual_seed(0)
    model = HPE(get_preset(preset).hpe)
    model.init_pca(torch.randn(256, 21, 3) * 0.3)
    flops = count_flops(model)
    if channels_last:
        model.to_channels_last()
    run = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 1, model.cfg.crop, model.cfg.crop).clamp(-1, 1)
    target = torch.randn(batch, 21, 3) * 0.3
    model.eval()

    def infer():
        with torch.inference_mode():
            run(x)

    t_inf = timed(_steps(infer), repeats, warmup=2)
    big = torch.randn(4 * batch, 1, model.cfg.crop, model.cfg.crop).clamp(-1, 1)

    def infer_big():
        with torch.inference_mode():
            run(big)

    t_big = timed(_steps(infer_big), repeats, warmup=2)
    model.train()
    opt = adam(p for p in model.parameters() if p.requires_grad)  # the training loop's optimiser

    def train_on(frames: torch.Tensor, joints: torch.Tensor):
        def train():
            loss = model.loss(run(frames), joints)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return train

    t_train = timed(_steps(train_on(x, target)), repeats, warmup=2)
    own = get_preset(preset).train_hpe.batch_size  # the batch the preset pre-trains with
    if own != batch:
        x_own = torch.randn(own, 1, model.cfg.crop, model.cfg.crop).clamp(-1, 1)
        t_own = timed(_steps(train_on(x_own, torch.randn(own, 21, 3) * 0.3)), repeats, warmup=2)
    else:
        t_own = t_train
    n = STEPS * batch  # frames per timed run
    frozen = {}
    if channels_last:  # the inference fast path: compiled with inductor freezing (BN folded, weights pre-packed)
        model.eval()
        t0 = time.perf_counter()
        fast = frozen_for_inference(model)
        with torch.inference_mode():
            same = float((fast(x) - model(x)["joints"]).abs().max())
        compile_s = time.perf_counter() - t0

        def infer_frozen():
            with torch.inference_mode():
                fast(x)

        t_fz = timed(_steps(infer_frozen), repeats, warmup=2)

        def infer_frozen_big():  # a second shape: compiled (and frozen) again on its first call
            with torch.inference_mode():
                fast(big)

        t_fz_big = timed(_steps(infer_frozen_big), repeats, warmup=2)
        frozen = {"frozen_infer_fps": n / t_fz[0], "frozen_infer_fps_spread": [n / t_fz[2], n / t_fz[1]],
                  "frozen_infer_gflops": flops * n / t_fz[0] / 1e9, "frozen_compile_s": compile_s,
                  "frozen_infer_fps_batch256": 4 * n / t_fz_big[0],
                  "frozen_max_abs_diff": same,
                  # frames after which compiling has paid for itself against eager channels_last
                  "frozen_break_even_frames": compile_s / ((t_inf[0] - t_fz[0]) / n) if t_fz[0] < t_inf[0] else None}
    return {**frozen, "gflop_per_frame": flops / 1e9,
            "infer_fps": n / t_inf[0], "infer_fps_spread": [n / t_inf[2], n / t_inf[1]],
            "infer_fps_batch256": 4 * n / t_big[0],
            "train_fps": n / t_train[0], "train_fps_spread": [n / t_train[2], n / t_train[1]],
            "train_batch_own": own, "train_fps_own": STEPS * own / t_own[0],
            "train_gflops_own": 3 * flops * STEPS * own / t_own[0] / 1e9,
            "infer_gflops": flops * n / t_inf[0] / 1e9, "train_gflops": 3 * flops * n / t_train[0] / 1e9}


def run(repeats: int = 5, compile_: bool = False) -> dict:
    """Every row, each bracketed by matmul measurements: on a shared VM the matmul rate itself drifts
    within minutes (docs/benchmarks.md), so each row's ratios use the mean of the two measurements
    taken just before and just after it, not one taken minutes earlier."""
    refs = [matmul_gflops(repeats)]
    out = {"threads": torch.get_num_threads(), "rows": []}
    for preset in ("cpu", "paper"):
        for cl in (False, True):
            for comp in ((False, True) if compile_ else (False,)):
                r = hpe_rates(preset, cl, comp, repeats)
                refs.append(matmul_gflops(repeats))
                peak = (refs[-2] + refs[-1]) / 2
                r.update(preset=preset, channels_last=cl, compiled=comp, matmul_gflops=peak,
                         infer_ratio=r["infer_gflops"] / peak, train_ratio=r["train_gflops"] / peak,
                         train_ratio_own=r["train_gflops_own"] / peak)
                r["infer_ratio_batch256"] = r["infer_fps_batch256"] * r["gflop_per_frame"] / peak
                if "frozen_infer_gflops" in r:
                    r["frozen_infer_ratio"] = r["frozen_infer_gflops"] / peak
                    r["frozen_infer_ratio_batch256"] = r["frozen_infer_fps_batch256"] * r["gflop_per_frame"] / peak
                out["rows"].append(r)
    out.update(matmul_gflops=statistics.median(refs), matmul_gflops_spread=[min(refs), max(refs)], matmul_measurements=refs)
    return out


def report(r: dict) -> None:
    lo, hi = r["matmul_gflops_spread"]
    print(f"HPE speed - fp32 matmul {r['matmul_gflops']:.0f} GFLOP/s on {r['threads']} threads (median of "
          f"{len(r['matmul_measurements'])} measurements bracketing the rows, {lo:.0f}-{hi:.0f}; each row's ratios use "
          "the two around it)")
    print("  preset  layout          compile  GFLOP/fr  infer fr/s (b64, b256)  train fr/s  matmul  infer/matmul  train/matmul"
          "  (infer at b256; train at the preset's own batch)")
    for x in r["rows"]:
        layout = "channels_last" if x["channels_last"] else "contiguous"
        print(f"  {x['preset']:6s}  {layout:14s}  {str(x['compiled']):7s}  {x['gflop_per_frame']:8.3f}  {x['infer_fps']:10.0f}"
              f" {x['infer_fps_batch256']:6.0f}"
              f"  {x['train_fps']:10.0f}  {x['matmul_gflops']:6.0f}  {x['infer_ratio']:12.2f}  {x['train_ratio']:12.2f}"
              f"  (infer b256: {x['infer_ratio_batch256']:.2f}; train b{x['train_batch_own']}: {x['train_fps_own']:.0f} fr/s,"
              f" {x['train_ratio_own']:.2f})")
        if "frozen_infer_fps" in x:
            big = x.get("frozen_infer_fps_batch256")
            print(f"  {x['preset']:6s}  {'+ frozen compile':14s}  {'infer':7s}  {x['gflop_per_frame']:8.3f}  {x['frozen_infer_fps']:10.0f}"
                  f" {big or 0:6.0f}  {'-':>10s}  {x['matmul_gflops']:6.0f}  {x['frozen_infer_ratio']:12.2f}  {'-':>12s}"
                  f"   (b256: {x.get('frozen_infer_ratio_batch256', 0):.2f}; compile {x['frozen_compile_s']:.0f} s, "
                  f"max |diff| {x['frozen_max_abs_diff']:.1e})")
    print("  targets: inference >= 0.50, training >= 0.30 of the matmul rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    report(run(args.repeats, args.compile))


if __name__ == "__main__":
    main()
