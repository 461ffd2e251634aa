"""How long the whole study (notebooks 00-05) would take on one device, projected from measured steps.

    python -m benchmarks.gpu_projection --measured FILE.jsonl [--preset paper] [--out benchmarks/gpu]
    python -m benchmarks.gpu_projection --device cpu --quick      # measures a few steps here first

``FILE.jsonl``: the lines ``python -m benchmarks.gpu_runs --json`` writes (seconds per training step of
each run type with 1, 2, 4, 8 workers side by side).  Writes ``workers.json`` (the scheduler reads it:
``{"device", "workers_per_gpu", "runs_per_hour": {N: x}, "peak_memory_gib": {N: x}}``, N the worker
count; workers_per_gpu the smallest N within 5 % of the best runs per hour) and
``reproduce_paper_projection.json`` (minutes per notebook and in total, with the assumptions).

The projection: a run trains ``epochs`` epochs (no early stop) of ``ceil(train items / batch)`` steps
at the measured seconds per step with N workers, plus evaluating the validation split each epoch at a
third of a training step per item (forward only); the runs of a notebook (:func:`notebook_runs`) go N
at a time, each at that speed.  Data generation, crop caches, scoring and the notebooks' own work are
not counted.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

KINDS = ("hpe", "har", "baseline", "feedback", "ensemble")
NOTEBOOKS = ("00_data", "01_standalone", "02_baseline", "03_feedback", "04_ensemble", "05_summary")
WITHIN = 0.05  # workers_per_gpu: the fewest workers within this share of the best throughput
EVAL_SHARE = 1 / 3  # an evaluated item costs this share of a trained one (forward only)


def notebook_runs(seeds: int = 3, trained_p_eq: int = 3, remedies: int = 3, candidates: int = 2) -> dict[str, dict]:
    """The trainings each notebook starts, with its default parameters, counting a run once (run folders
    are keyed by configuration, so a later notebook loads an earlier one's runs).  Feedback variants
    (sweep, remedies, noisy feedback) count as ``feedback``; pose-only fine-tuning as ``baseline``.

    * 01: HPE plain, FiLM (w_eq) and oracle (fed the truth) of seed 0; HAR with attention of seed 0 and
      plain of ``seeds`` seeds.
    * 02: the FiLM HPEs of the other seeds; trained and pose-only baselines over the seeds.
    * 03: feedback over the seeds and the trained p_eq sweep (seed 0); the oracle HPEs of the other
      seeds; each remedy's candidates (seed 0; the curriculum pre-trains its two feeds' HPEs), then the
      chosen ones over the other seeds (a curriculum choice pre-trains its HPE for them).
    * 04: baseline with attention (its HARs for the other seeds), both ensembles, noisy feedback, over the seeds.
    """
    more = seeds - 1
    return {
        "00_data": {},
        "01_standalone": {"hpe": 3, "har": 1 + seeds},
        "02_baseline": {"hpe": more, "baseline": 2 * seeds},
        "03_feedback": {"hpe": more + candidates + more, "feedback": seeds + trained_p_eq + remedies * candidates
                        + remedies * more},
        "04_ensemble": {"har": more, "baseline": seeds, "ensemble": 2 * seeds, "feedback": seeds},
        "05_summary": {},
    }


def run_shape(preset) -> dict[str, dict]:
    """Per run type: epochs, training steps per epoch and evaluated items per epoch, from the preset's
    data (synth: subjects x 45 actions x reps, the first half of the reps for training, 15 % of those
    held out for validation) and its batch sizes."""
    s = preset.synth
    frames = max(1, round(s.fps * s.duration_s))
    train_all = s.subjects * 45 * (s.reps // 2)
    val = round(train_all * preset.train_hpe.val_fraction)
    train = train_all - val
    shape = {}
    for kind, cfg, n_train, n_val in (("hpe", preset.train_hpe, train * frames, val * frames),
                                      ("har", preset.train_har, train, val)):
        shape[kind] = {"epochs": cfg.epochs, "steps": n_train // cfg.batch_size if kind == "hpe" else
                       math.ceil(n_train / cfg.batch_size), "eval_items": n_val, "batch": cfg.batch_size}
    for kind in ("baseline", "feedback", "ensemble"):
        cfg = preset.train_fuse
        shape[kind] = {"epochs": cfg.epochs, "steps": math.ceil(train / cfg.batch_size), "eval_items": val,
                       "batch": cfg.batch_size}
    return shape


def load_measurements(lines: list[str], graphs: bool = False) -> dict[int, dict[str, dict]]:
    """{workers: {kind: row}} from ``gpu_runs`` JSON lines, the rows with ``graphs`` as asked."""
    out: dict[int, dict[str, dict]] = {}
    for line in lines:
        if line.strip():
            r = json.loads(line)
            for row in r["rows"]:
                if row["graphs"] == graphs and "error" not in row:
                    out.setdefault(r["workers"], {})[row["kind"]] = row
    return out


def run_seconds(row: dict, shape: dict) -> float:
    """One run's training seconds at the measured step time (``row``), its epochs and steps."""
    step = row["seconds_per_step"]
    per_item = step / row["items_per_step"]
    return shape["epochs"] * (shape["steps"] * step + EVAL_SHARE * per_item * shape["eval_items"])


def project(measured: dict[int, dict[str, dict]], preset, workers: int, runs: dict[str, dict] | None = None) -> dict:
    """Minutes per notebook and in total with ``workers`` runs side by side, from ``measured`` (see
    :func:`load_measurements`); a notebook's runs of one kind take ceil(n / workers) rounds."""
    runs = runs if runs is not None else notebook_runs()
    shape, rows = run_shape(preset), measured[workers]
    minutes = {}
    for nb, counts in runs.items():
        total = 0.0
        for kind, n in counts.items():
            total += math.ceil(n / workers) * run_seconds(rows[kind], shape[kind])
        minutes[nb] = total / 60
    return {"workers": workers, "minutes": minutes, "total_minutes": sum(minutes.values()),
            "run_minutes": {k: run_seconds(rows[k], shape[k]) / 60 for k in rows if k in shape}}


def workers_file(measured: dict[int, dict[str, dict]], preset, device: str, runs: dict[str, dict] | None = None) -> dict:
    """The scheduler's file: runs per hour of the study's mix of runs for each worker count, and the
    summed peak memory of the workers (the largest over run types)."""
    runs = runs if runs is not None else notebook_runs()
    shape = run_shape(preset)
    mix: dict[str, int] = {}
    for counts in runs.values():
        for kind, n in counts.items():
            mix[kind] = mix.get(kind, 0) + n
    per_hour, memory = {}, {}
    for n, rows in sorted(measured.items()):
        if not all(k in rows for k in mix):
            continue
        seconds = sum(count * run_seconds(rows[k], shape[k]) for k, count in mix.items()) / n  # n at a time
        per_hour[str(n)] = sum(mix.values()) / (seconds / 3600)
        peaks = [r["peak_memory_gib"] for r in rows.values() if r.get("peak_memory_gib") is not None]
        memory[str(n)] = max(peaks) if peaks else None
    best = max(per_hour.values())
    chosen = min(int(n) for n, x in per_hour.items() if x >= (1 - WITHIN) * best)
    return {"device": device, "workers_per_gpu": chosen, "runs_per_hour": per_hour, "peak_memory_gib": memory}


def write(measured, preset, device: str, out: Path, graphs: bool) -> tuple[dict, dict]:
    workers = workers_file(measured, preset, device)
    chosen = workers["workers_per_gpu"]
    projection = {
        "device": device, "preset": preset.name, "graphs": graphs,
        "at_workers_per_gpu": project(measured, preset, chosen),
        "by_workers": {str(n): project(measured, preset, n)["total_minutes"] for n in sorted(measured)
                       if all(k in measured[n] for k in KINDS)},
        "runs": notebook_runs(), "run_shape": run_shape(preset),
        "assumptions": [
            "every run trains all its epochs (no early stop) at the measured seconds per training step",
            f"validation each epoch: {EVAL_SHARE:.2f} of a training step per item; the test split and scoring not counted",
            "the runs of one kind in a notebook go workers_per_gpu at a time; the pre-trainings a fine-tuning needs"
            " are not waited for (they are counted, not ordered)",
            "data generation, crop caches and the notebooks' own cells (00, 05) are not counted",
            "measured on random inputs of the preset's shapes, sequences of full length, activation checkpointing off",
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers.json").write_text(json.dumps(workers, indent=1))
    (out / "reproduce_paper_projection.json").write_text(json.dumps(projection, indent=1))
    return workers, projection


def main(argv=None) -> None:
    from handfuse.config import get_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", default=None, help="gpu_runs JSON lines (default: measure now)")
    ap.add_argument("--preset", default=None, help="the measured preset (default: paper; --quick: cpu)")
    ap.add_argument("--device", default=None, help="the device the numbers are from (default: cuda's name)")
    ap.add_argument("--quick", action="store_true", help="measure 2 steps with 1 and 2 workers first (CPU check)")
    ap.add_argument("--graphs", action="store_true", help="project the rows with CUDA graphs on")
    ap.add_argument("--out", default=None, help="folder for the two JSON files (default: runs/gpu-projection)")
    a = ap.parse_args(argv)
    preset = get_preset(a.preset or ("cpu" if a.quick else "paper"))
    device = a.device or "cuda"
    if a.measured:
        lines = Path(a.measured).read_text().splitlines()
    else:
        from benchmarks.gpu_runs import run

        counts = (1, 2) if a.quick else (1, 2, 4, 8)
        lines = [json.dumps(run(n, preset.name, device, steps=2 if a.quick else 10, graphs=(a.graphs,)))
                 for n in counts]
    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else device
    workers, projection = write(load_measurements(lines, a.graphs), preset, name,
                                Path(a.out or "runs/gpu-projection"), a.graphs)
    p = projection["at_workers_per_gpu"]
    print(f"{name}: {workers['workers_per_gpu']} workers per device; runs per hour "
          + ", ".join(f"{n}: {x:.1f}" for n, x in workers["runs_per_hour"].items()))
    print(f"the {preset.name} study (00-05) projected at {p['workers']} workers: {p['total_minutes']:.1f} min ("
          + ", ".join(f"{nb} {m:.1f}" for nb, m in p["minutes"].items()) + ")")


if __name__ == "__main__":
    main()
