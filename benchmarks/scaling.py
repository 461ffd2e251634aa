"""How cost grows: the HPE and every fusion method at three sequence lengths and three crop sizes.

``python -m benchmarks.scaling [--preset cpu] [--repeats 3]`` (also the ``scaling`` stage of
``python -m benchmarks``).  Writes ``figures/bench_scaling.png`` (and ``.pdf``).

One training step (forward, backward, Adam) on a batch of the preset's ``train_fuse.batch_size``
sequences, on random crops (speed does not depend on the pixels or the weights, so nothing is
pre-trained and no data is read).  Two sweeps through the preset's point (T = 16, its crop S):

- **sequence length** T in (8, 16, 32) at the preset's crop: every method processes each frame
  once per pass, so time should grow linearly in T (log-log slope 1);
- **crop size** S in (S/2, S, 3S/2) at T = 16: the conv trunk's work is quadratic in S, while the
  FC head (the trunk ends in a fixed pool) and the action recogniser do not depend on S, so the
  whole step grows with a slope between 0 and 2, and the trunk alone (``HPE trunk``, forward only)
  with a slope close to 2.

Each figure is the median of ``--repeats`` steps after one warm-up.  The slopes are least-squares
fits of log(time) on log(T) or log(S).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from handfuse.config import get_preset

from .fusion_speed import _models, fresh_method, train_step
from .timing import cli, timed

LENGTHS = (8, 16, 32)
T_FIXED = 16
METHODS = [  # (label, method, FusionConfig options)
    ("baseline", "baseline", {}),
    ("feedback (FiLM fc, p_eq 0)", "feedback", {"film": "fc", "p_eq": 0.0}),
    ("noisy feedback (FiLM fc)", "noisy_feedback", {"film": "fc"}),
    ("ensemble", "ensemble", {"film": "fc"}),
]


def crop_sizes(preset) -> tuple[int, int, int]:
    s = preset.preprocess.crop
    return (s // 2, s, (3 * s) // 2)


def _batch(B: int, T: int, S: int, half: float, gen: torch.Generator) -> dict:
    centre = torch.tensor([0.0, 0.0, 450.0]) + 30 * torch.randn(B, T, 3, generator=gen)  # (B, T, 3) mm
    joints = 0.3 * torch.randn(B, T, 21, 3, generator=gen)  # normalised by the half cube
    return {"depth": torch.rand(B, T, 1, S, S, generator=gen) * 2 - 1, "centre": centre, "joints": joints,
            "joints_mm": centre[:, :, None] + joints * half, "mask": torch.ones(B, T, dtype=torch.bool),
            "label": torch.randint(0, 45, (B,), generator=gen), "length": torch.full((B,), T)}


def _sized(preset, S: int):
    """The preset with S-pixel crops (both pose estimators follow the data's crop size)."""
    return replace(preset, preprocess=replace(preset.preprocess, crop=S), hpe=replace(preset.hpe, crop=S),
                   resnet_hpe=replace(preset.resnet_hpe, crop=S))


def _method_step(preset, name: str, options: dict, T: int, S: int, repeats: int) -> float:
    sized = _sized(preset, S)
    model, opt = fresh_method(sized, name, options, film="fc")
    batch = _batch(preset.train_fuse.batch_size, T, S, sized.preprocess.cube_mm / 2, torch.Generator().manual_seed(0))
    model.train()
    return timed(lambda: train_step(model, opt, batch), repeats, warmup=1)[0]


def _trunk_forward(preset, S: int, frames: int, repeats: int) -> float:
    sized = _sized(preset, S)
    hpe = _models(sized, "fc").hpe.eval()
    x = torch.rand(frames, 1, S, S, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def forward():
        with torch.inference_mode():
            hpe.trunk(x)

    return timed(forward, repeats, warmup=1)[0]


def slope(xs, ys) -> float:
    """Least-squares slope of log(y) on log(x): the exponent of a power law."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run(preset_name: str = "cpu", repeats: int = 3, figure: bool = True) -> dict:
    preset = get_preset(preset_name)
    S0, sizes = preset.preprocess.crop, crop_sizes(preset)
    B = preset.train_fuse.batch_size
    rows = {}
    for label, name, options in METHODS:
        by_t = [_method_step(preset, name, options, T, S0, repeats) for T in LENGTHS]
        by_s = [by_t[LENGTHS.index(T_FIXED)] if S == S0 else _method_step(preset, name, options, T_FIXED, S, repeats)
                for S in sizes]
        rows[label] = {"seconds_by_T": by_t, "seconds_by_S": by_s, "slope_T": slope(LENGTHS, by_t),
                       "slope_S": slope(sizes, by_s)}
    trunk = [_trunk_forward(preset, S, B * T_FIXED, repeats) for S in sizes]
    rows["HPE trunk (forward only)"] = {"seconds_by_S": trunk, "slope_S": slope(sizes, trunk)}
    out = {"preset": preset_name, "batch_size": B, "lengths": list(LENGTHS), "T_at_S_sweep": T_FIXED,
           "crop_sizes": list(sizes), "S_at_T_sweep": S0, "repeats": repeats, "rows": rows}
    if figure:
        out["figure"] = [str(p) for p in plot(out)]
    return out


def plot(r: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from handfuse.plots import savefig

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, v in r["rows"].items():
        if "seconds_by_T" in v:
            a.plot(r["lengths"], v["seconds_by_T"], "o-", label=f"{label} (slope {v['slope_T']:.2f})")
        b.plot(r["crop_sizes"], v["seconds_by_S"], "o-", label=f"{label} (slope {v['slope_S']:.2f})")
    for ax, xs, key, expect, what in ((a, r["lengths"], "seconds_by_T", 1, "sequence length T (frames)"),
                                      (b, r["crop_sizes"], "seconds_by_S", 2, "crop size S (pixels)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(what)
        ax.set_ylabel("seconds per training step" if ax is a else "seconds per step (trunk: per forward)")
        y0 = min(min(v[key]) for v in r["rows"].values() if key in v)
        ref = [y0 * (x / xs[0]) ** expect for x in xs]
        ax.plot(xs, ref, "k:", label=f"slope {expect} (reference)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    a.set_title(f"time against T (S = {r['S_at_T_sweep']}, batch {r['batch_size']} sequences)")
    b.set_title(f"time against S (T = {r['T_at_S_sweep']}, batch {r['batch_size']} sequences)")
    fig.suptitle(f"How cost grows, preset {r['preset']} (log-log; median of {r['repeats']})", fontsize=10)
    fig.tight_layout()
    paths = savefig(fig, "bench_scaling")
    plt.close(fig)
    return paths


def report(r: dict) -> None:
    print(f"how cost grows, preset {r['preset']}, batch {r['batch_size']} sequences, median of {r['repeats']} "
          f"(seconds per training step; log-log slopes)")
    ts, ss = r["lengths"], r["crop_sizes"]
    print(f"  {'':28s} " + " ".join(f"{'T=' + str(t):>7s}" for t in ts) + f" {'slope':>6s}   "
          + " ".join(f"{'S=' + str(s):>7s}" for s in ss) + f" {'slope':>6s}")
    for label, v in r["rows"].items():
        by_t = (" ".join(f"{x:7.3f}" for x in v["seconds_by_T"]) + f" {v['slope_T']:6.2f}") if "seconds_by_T" in v \
            else " " * (8 * len(ts) + 6)
        print(f"  {label:28s} {by_t}   " + " ".join(f"{x:7.3f}" for x in v["seconds_by_S"]) + f" {v['slope_S']:6.2f}")
    print("  expected: slope 1 in T for every method; in S, about 2 for the trunk alone and less for a whole step "
          "(the FC head and the action recogniser do not grow with S)")
    if r.get("figure"):
        print("  figure: " + ", ".join(r["figure"]))


def main() -> None:
    cli(__doc__, run, report, repeats=3)


if __name__ == "__main__":
    main()
