"""What a researcher waits for: HAR training, data starvation of the training loops, widget latency,
and the last measured reproduction.

``python -m benchmarks.workflow_speed [--preset cpu] [--repeats 3]`` (also the ``workflow`` stage of
``python -m benchmarks``).

* HAR training: sequences/s of the preset's LSTM (with and without attention) on pose sequences of
  the preset's length, forward, backward and an Adam step (the model alone: no data loading).
* Data starvation: the share of a training epoch the model waits for its next batch (assembly from
  the crop cache and augmentation, in the training process), measured by the training loop itself
  (``history[i]["data_seconds"] / history[i]["seconds"]``) on a capped epoch of HPE pre-training and
  of baseline fine-tuning.  Target (issue 7): under 10 %.
* Widget latency: seconds per update of the p_eq explorer (moving the slider re-runs feedback on
  the sequence and redraws), on the preset's sizes; target: under 1 s.
* Reproduction: minutes of the last ``python -m handfuse reproduce`` of the preset, from its
  ``timings.json`` (it takes half an hour: it is not re-run here).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import SequenceDataset
from handfuse.fpha import FPHA
from handfuse.finetune import FusionTask
from handfuse.methods import build, method_config
from handfuse.models.har import PoseLSTM
from handfuse.paths import REPO, ensure_synthetic
from handfuse.standalone import splits
from handfuse.tasks import HPETask
from handfuse.train import fit

from .fusion_speed import _models
from .timing import timed


def har_rates(preset, repeats: int, batches: int = 20) -> dict:
    """Training sequences/s of the preset's LSTM, plain and with attention."""
    T = max(4, round(preset.synth.fps * preset.synth.duration_s))
    out = {}
    for attention in (False, True):
        torch.manual_seed(0)
        model = PoseLSTM(replace(preset.har, attention=attention)).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        B = preset.train_har.batch_size
        poses, mask = torch.randn(B, T, 21, 3) * 0.3, torch.ones(B, T, dtype=torch.bool)
        labels = torch.randint(0, 45, (B,))

        def epoch():
            for _ in range(batches):
                loss = model.loss(model(poses, mask), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        t = timed(epoch, repeats, warmup=1)
        out["attention" if attention else "plain"] = {"seq_per_s": B * batches / t[0],
                                                      "spread": [B * batches / t[2], B * batches / t[1]]}
    return {"length": T, "batch_size": preset.train_har.batch_size, **out}


def starvation(preset, fpha: FPHA, cache, max_batches: int = 25) -> dict:
    """Share of a capped training epoch spent waiting for data, for HPE pre-training and fine-tuning."""
    out = {}
    parts = splits(fpha, preset, 0)
    torch.manual_seed(0)
    models = _models(preset, preset.film)
    hpe = models.hpe_film
    hpe_task = HPETask(cache, parts, augment=preset.augment)
    fuse = build("baseline", models, preset.preprocess.cube_mm / 2, method_config("baseline", film=preset.film))
    fuse_task = FusionTask({k: SequenceDataset(cache, refs) for k, refs in parts.items()}, jitter_mm=preset.fuse_jitter_mm)
    for name, model, task, cfg in (("hpe_pretraining", hpe, hpe_task, preset.train_hpe),
                                   ("fusion_finetuning", fuse, fuse_task, preset.train_fuse)):
        cfg = replace(cfg, epochs=1, max_batches=max_batches)
        with tempfile.TemporaryDirectory() as tmp:
            r = fit(model, task, cfg, Path(tmp), config={"benchmark": name}, progress=False)
        h = r.history[0]
        out[name] = {"epoch_seconds": h["seconds"], "data_seconds": h["data_seconds"],
                     "data_share": h["data_seconds"] / h["seconds"], "batches": max_batches}
    return out


def widget_latency(preset, fpha: FPHA, cache, moves: int = 6) -> dict:
    """Seconds per p_eq-explorer update (slider moves, then a sequence change)."""
    from handfuse.widgets import p_eq_explorer

    torch.manual_seed(0)
    model = build("feedback", _models(preset, preset.film), preset.preprocess.cube_mm / 2,
                  method_config("feedback", film=preset.film))
    explorer = p_eq_explorer(model, SequenceDataset(cache, fpha.test))
    slider, dropdown, times = explorer.controls["p_eq"], explorer.controls["sequence"], []
    for value in np.linspace(0.05, 0.95, moves):
        slider.value = float(round(value, 2))
        times.append(explorer.latency_s)
    dropdown.value = 1  # a new sequence: its p_eq = 0 and 1 curves are computed too
    first = explorer.latency_s
    return {"slider_s": statistics.median(times), "slider_spread": [min(times), max(times)], "new_sequence_s": first}


def reproduction(preset_name: str) -> dict | None:
    """The last reproduction's timings.json of the preset (``runs/<preset>``), if there is one."""
    path = REPO / "runs" / preset_name / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run(preset_name: str = "cpu", repeats: int = 3) -> dict:
    preset = get_preset(preset_name)
    fpha = FPHA(ensure_synthetic(preset_name))
    cache = get_cache(fpha, preset.preprocess)
    return {"preset": preset_name, "har": har_rates(preset, repeats), "starvation": starvation(preset, fpha, cache),
            "widget": widget_latency(preset, fpha, cache), "reproduction": reproduction(preset_name)}


def report(r: dict) -> None:
    h = r["har"]
    print(f"workflow, preset {r['preset']}")
    print(f"  HAR training (batch {h['batch_size']}, T = {h['length']}): {h['plain']['seq_per_s']:.0f} seq/s plain, "
          f"{h['attention']['seq_per_s']:.0f} with attention")
    for name, s in r["starvation"].items():
        print(f"  data starvation, {name:18s}: {100 * s['data_share']:5.1f} % of the epoch waiting for data "
              f"({s['data_seconds']:.2f} of {s['epoch_seconds']:.2f} s, {s['batches']} batches)  (target < 10 %)")
    w = r["widget"]
    print(f"  p_eq explorer: {w['slider_s']:.3f} s per slider move (spread {w['slider_spread'][0]:.3f}-"
          f"{w['slider_spread'][1]:.3f}), {w['new_sequence_s']:.3f} s for a new sequence  (target < 1 s)")
    rep = r["reproduction"]
    if rep:
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in rep["seconds"].items())
        print(f"  last reproduction ({rep['date']}, {rep['machine']['cpu']}): {rep['total_minutes']:.1f} min ({parts} min)  (target < 30 min)")
    else:
        print(f"  no reproduction of {r['preset']} yet: make reproduce writes runs/{r['preset']}/timings.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    report(run(args.preset, args.repeats))


if __name__ == "__main__":
    main()
