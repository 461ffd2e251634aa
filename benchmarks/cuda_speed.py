"""The CUDA paths on a GPU: HPE frames/s and achieved TFLOP/s against large matmuls measured in the
same process, fusion fine-tuning throughput of each method against the baseline, and the speed-up
of the training loop's CUDA input path.  Never part of CI (our machines have no GPU).

    python -m benchmarks.cuda_speed [--repeats 5] [--data-root DIR] [--compile] [--json FILE]

* **HPE** at the ``cpu`` and ``paper`` sizes, contiguous and channels_last, fp32 and bf16 autocast
  (what ``--device cuda`` trains with): inference at batch 256 and 1024, training (forward,
  backward, fused Adam) at the preset's own batch and at 256.  Achieved TFLOP/s count 3x the
  forward FLOPs for training; each row's ratio is against the matmul of its precision (bf16, or
  fp32 with TF32 off, torch's default), measured before and after the HPE rows.
* **Fusion methods** (``cpu`` and ``paper`` models, bf16 autocast, the preset's own fine-tuning
  batch) on the training sequences of ``--data-root`` (default: the cpu preset's synthetic data,
  cropped at each preset's size): sequences/s and frames/s, and the ratio to the baseline.
* **Input path**: one epoch of HPE pre-training batches (crop cache -> batch -> augmentation ->
  GPU), the augmentation on the host and a plain copy, against the loop's path (pinned,
  non-blocking copy, augmentation on the GPU).
* ``--compile``: the paper-sized HPE under ``torch.compile`` (bf16, channels_last), with its
  compile time.
* ``--profile``: where one paper-sized HPE training step's time goes (fp32 and bf16, channels_last,
  batch 128): host time against GPU time, and the kernels that take the most GPU time.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import SequenceDataset
from handfuse.fpha import FPHA
from handfuse.models.hpe import HPE, count_flops
from handfuse.paths import ensure_synthetic
from handfuse.report import machine_info
from handfuse.train import adam, to_device

from .fusion_speed import fixed_batches, fresh_method, train_step
from .timing import timed

STEPS = 8  # calls per timed run: one GPU step is too short to time alone
METHODS = [("baseline", "baseline", {}), ("feedback, FiLM fc, p_eq 0.95", "feedback", {"film": "fc", "p_eq": 0.95}),
           ("feedback, FiLM both, p_eq 0.95", "feedback", {"film": "both", "p_eq": 0.95}),
           ("ensemble, FiLM both", "ensemble", {"film": "both"})]


def synced(fn):
    """``fn`` run STEPS times, then waiting for the GPU: what ``timed`` times."""
    def run():
        for _ in range(STEPS):
            fn()
        torch.cuda.synchronize()
    return run


def matmul_tflops(dtype: torch.dtype, repeats: int, n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    t = timed(synced(lambda: a @ b), repeats, warmup=1)[0]
    return 2 * n**3 * STEPS / t / 1e12


def amp(bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()


def fresh_hpe(preset: str, channels_last: bool) -> tuple[HPE, float]:
    """A freshly initialised HPE of ``preset`` on the GPU, and its forward FLOPs per frame."""
    torch.manual_seed(0)
    model = HPE(get_preset(preset).hpe)
    model.init_pca(torch.randn(256, 21, 3) * 0.3)
    flops = count_flops(model)
    model.cuda()
    if channels_last:
        model.to_channels_last()
    return model, flops


def random_crops(model: HPE, batch: int) -> torch.Tensor:
    """(batch, 1, S, S) random normalised depth crops on the GPU, S the model's crop size."""
    return torch.randn(batch, 1, model.cfg.crop, model.cfg.crop, device="cuda").clamp(-1, 1)


def training_step(model: HPE, run, opt: torch.optim.Optimizer, batch: int, bf16: bool):
    """A training step (forward through ``run``, the model or its compiled form, backward, Adam)
    on a fixed random batch of ``batch`` crops."""
    x = random_crops(model, batch)
    y = torch.randn(batch, 21, 3, device="cuda") * 0.3

    def step():
        with amp(bf16):
            loss = model.loss(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def hpe_row(preset: str, channels_last: bool, bf16: bool, repeats: int, compile_: bool = False) -> dict:
    model, flops = fresh_hpe(preset, channels_last)  # flops: per frame, forward
    own = get_preset(preset).train_hpe.batch_size
    run, row = model, {"preset": preset, "channels_last": channels_last, "bf16": bf16, "compiled": compile_,
                       "gflop_per_frame": flops / 1e9}
    if compile_:
        t0 = time.perf_counter()
        run = torch.compile(model)
    model.eval()
    for batch in (256, 1024):
        x = random_crops(model, batch)

        def infer():
            with torch.inference_mode(), amp(bf16):
                run(x)
        t = timed(synced(infer), repeats, warmup=2)[0]
        row[f"infer_fps_b{batch}"] = STEPS * batch / t
    model.train()
    opt = adam(p for p in model.parameters() if p.requires_grad)
    for batch in sorted({own, 256}):
        t = timed(synced(training_step(model, run, opt, batch, bf16)), repeats, warmup=2)[0]
        row[f"train_fps_b{batch}"] = STEPS * batch / t
    if compile_:
        row["compile_and_time_s"] = time.perf_counter() - t0
    row["train_batch_own"] = own
    row["infer_tflops"] = row["infer_fps_b1024"] * flops / 1e12
    row["train_tflops"] = row[f"train_fps_b{own}"] * 3 * flops / 1e12
    row["train_tflops_b256"] = row["train_fps_b256"] * 3 * flops / 1e12
    return row


def hpe_rows(repeats: int, compile_: bool) -> dict:
    refs = {"bf16": [matmul_tflops(torch.bfloat16, repeats)], "fp32": [matmul_tflops(torch.float32, repeats)]}
    rows = [hpe_row(p, cl, bf16, repeats) for p in ("cpu", "paper") for cl in (False, True) for bf16 in (False, True)]
    if compile_:
        rows.append(hpe_row("paper", True, True, repeats, compile_=True))
    refs["bf16"].append(matmul_tflops(torch.bfloat16, repeats))
    refs["fp32"].append(matmul_tflops(torch.float32, repeats))
    peak = {k: sum(v) / len(v) for k, v in refs.items()}
    for r in rows:
        ref = peak["bf16" if r["bf16"] else "fp32"]
        r.update(infer_ratio=r["infer_tflops"] / ref, train_ratio=r["train_tflops"] / ref,
                 train_ratio_b256=r["train_tflops_b256"] / ref)
    return {"matmul_tflops": peak, "matmul_measurements": refs, "rows": rows}


def fusion_rows(data_root: Path, repeats: int, batches: int = 12) -> dict:
    out, fpha = {}, FPHA(data_root)
    for name in ("cpu", "paper"):
        preset = get_preset(name)
        data = SequenceDataset(get_cache(fpha, preset.preprocess, progress=False), fpha.train)
        B = preset.train_fuse.batch_size
        fixed = [to_device(b, "cuda") for b in fixed_batches(data, B, batches)]
        frames = sum(int(b["mask"].sum()) for b in fixed)
        rows = {}
        for label, method, options in METHODS:
            model, opt = fresh_method(preset, method, options)
            model.cuda()
            opt = adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)  # on the GPU's parameters
            model.train()

            def epoch():
                for b in fixed:
                    with amp(True):
                        train_step(model, opt, b)
                torch.cuda.synchronize()
            t = timed(epoch, repeats, warmup=1)[0]
            rows[label] = {"train_seq_per_s": len(fixed) * B / t, "train_frames_per_s": frames / t}
        for r in rows.values():
            r["vs_baseline"] = r["train_seq_per_s"] / rows["baseline"]["train_seq_per_s"]
        out[name] = {"batch_size": B, "sequences": len(fixed) * B, "frames": frames, "rows": rows}
    return out


def input_path(data_root: Path, repeats: int, batches: int = 40) -> dict:
    """The same batches of the paper-sized HPE task from the crop cache to the GPU, augmented: on the
    host with a plain copy (before), and the training loop's way (pinned copy, augmentation on the GPU)."""
    from handfuse.augment import AugmentConfig
    from handfuse.tasks import HPETask

    preset = get_preset("paper")
    fpha = FPHA(data_root)
    task = HPETask(get_cache(fpha, preset.preprocess, progress=False), {"train": fpha.train}, AugmentConfig())
    cfg = replace(preset.train_hpe, max_batches=batches, device="cuda")

    def host():  # batches made for a CPU run, then copied
        for b in task.batches("train", 0, replace(cfg, device="cpu")):
            for v in b.values():
                v.to("cuda")
        torch.cuda.synchronize()

    def loop():
        for b in task.batches("train", 0, cfg):
            to_device(b, "cuda")
        torch.cuda.synchronize()
    t_host, t_loop = timed(host, repeats, warmup=1)[0], timed(loop, repeats, warmup=1)[0]
    n = batches * cfg.batch_size
    return {"frames": n, "host_fps": n / t_host, "loop_fps": n / t_loop, "speedup": t_host / t_loop}


def profile_step(bf16: bool, repeats: int = 5, batch: int = 128) -> dict:
    """One paper-sized HPE training step under torch.profiler: the host's time per step (Python,
    autograd and kernel launches), the GPU's busy time per step, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    model = fresh_hpe("paper", channels_last=True)[0].train()
    step = training_step(model, model, adam(p for p in model.parameters() if p.requires_grad), batch, bf16)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    host = (time.perf_counter() - t0) / repeats  # until the last launch returns
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / repeats
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]  # the kernels and copies
    gpu_us = sum(e.self_device_time_total for e in events) / repeats
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:10]
    return {"bf16": bf16, "batch": batch, "host_ms": host * 1e3, "wall_ms": wall * 1e3, "gpu_busy_ms": gpu_us / 1e3,
            "kernels_per_step": sum(e.count for e in events) / repeats,
            "top": [{"name": e.key[:70], "ms": e.self_device_time_total / repeats / 1e3,
                     "calls": e.count / repeats} for e in top]}


def hpe_report(h: dict) -> None:
    m = h["matmul_tflops"]
    print(f"  matmul 8192^3: bf16 {m['bf16']:.0f} TFLOP/s, fp32 {m['fp32']:.1f}")
    print("  preset  layout                  prec  GFLOP/fr  infer fr/s b256   b1024  train fr/s own        b256"
          "  infer/matmul  train/matmul (own, b256)")
    for x in h["rows"]:
        layout = ("channels_last" if x["channels_last"] else "contiguous") + (" +compile" if x["compiled"] else "")
        own = x["train_batch_own"]
        print(f"  {x['preset']:6s}  {layout:22s}  {'bf16' if x['bf16'] else 'fp32'}  {x['gflop_per_frame']:7.3f}"
              f"  {x['infer_fps_b256']:9.0f} {x['infer_fps_b1024']:7.0f}  {x[f'train_fps_b{own}']:8.0f} (b{own})"
              f" {x['train_fps_b256']:7.0f}  {x['infer_ratio']:11.3f}  {x['train_ratio']:.3f}, {x['train_ratio_b256']:.3f}"
              + (f"  [compile + timing {x['compile_and_time_s']:.0f} s]" if x["compiled"] else ""))


def report(r: dict) -> None:
    print(f"CUDA: {r['gpu']}, torch {r['torch']}, cudnn.benchmark {r['cudnn_benchmark']}")
    if "hpe" in r:
        hpe_report(r["hpe"])
    for name, f in r.get("fusion", {}).items():
        print(f"  fusion fine-tuning, {name} models, batch {f['batch_size']} ({f['sequences']} sequences, {f['frames']} frames):")
        for label, v in f["rows"].items():
            print(f"    {label:32s} {v['train_seq_per_s']:8.1f} seq/s {v['train_frames_per_s']:9.0f} fr/s  x{v['vs_baseline']:.2f}")
    for p in r.get("profile", []):
        print(f"  profile, paper HPE training step, {'bf16' if p['bf16'] else 'fp32'}, channels_last, batch {p['batch']}: "
              f"wall {p['wall_ms']:.1f} ms, host {p['host_ms']:.1f} ms, GPU busy {p['gpu_busy_ms']:.1f} ms, "
              f"{p['kernels_per_step']:.0f} kernels")
        for k in p["top"]:
            print(f"    {k['ms']:7.2f} ms  {k['calls']:5.0f}x  {k['name']}")
    if "input" in r:
        i = r["input"]
        print(f"  HPE input path (paper crops): host augmentation + copy {i['host_fps']:.0f} fr/s; pinned copy + GPU "
              f"augmentation {i['loop_fps']:.0f} fr/s (x{i['speedup']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-root", default=None, help="FPHA-format data for the fusion and input rows "
                    "(default: the cpu preset's synthetic benchmark); 'none' leaves those rows out")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", nargs="+", choices=["hpe", "fusion", "input", "profile"], default=None,
                    help="run only these parts (default: hpe, fusion and input, and profile with --profile)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: benchmarks.cuda_speed needs a CUDA GPU; this machine has none")
    parts = set(args.only or ["hpe", "fusion", "input"] + (["profile"] if args.profile else []))
    if args.data_root == "none":
        parts -= {"fusion", "input"}
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "machine": machine_info(),
              "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if "hpe" in parts:
        result["hpe"] = hpe_rows(args.repeats, args.compile)
    root = Path(args.data_root) if args.data_root not in (None, "none") else None
    if "fusion" in parts:
        result["fusion"] = fusion_rows(root or ensure_synthetic("cpu"), args.repeats)
    if "input" in parts:
        result["input"] = input_path(root or ensure_synthetic("cpu"), args.repeats)
    if "profile" in parts:
        result["profile"] = [profile_step(False), profile_step(True)]
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
