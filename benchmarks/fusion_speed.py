"""Fine-tuning throughput of every fusion method, against the batched baseline, in one process.

``python -m benchmarks.fusion_speed [--preset cpu] [--batches 12] [--repeats 3]``
(also the ``fusion`` stage of ``python -m benchmarks``).

Same sequences, same batch size (the preset's ``train_fuse.batch_size``) for
every method: a fixed list of training batches of the preset's synthetic data
is run forward, backward and through an Adam step.  Speed does not depend on
the weights, so the models are freshly initialised (no pre-training needed).
Reported: sequences/s (median of ``--repeats``, with the min-max spread), the
ratio to the baseline measured in the same run, and the evaluation rate
(sequences/s, the deterministic forward under ``inference_mode``).

Also the fold's gain (:func:`fold_gain`): the baseline with its frozen batch norms
folded into the convolutions against the same model running them as modules.

Rows: baseline; feedback with FiLM in the residual blocks, the FC layers or
both, at p_eq = 0.95 (the original's training coin) and p_eq = 0 (every step fed
a prediction: the full step-by-step unroll); noisy feedback; the ensemble.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import replace

import torch

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import SequenceDataset, collate_sequences
from handfuse.fpha import FPHA
from handfuse.finetune import Pretrained
from handfuse.methods import build, method_config
from handfuse.models.fold import plain_batch_norm
from handfuse.models.har import PoseLSTM
from handfuse.models.hpe import HPE
from handfuse.paths import ensure_synthetic
from handfuse.train import adam

from .timing import cli, timed

VARIANTS = [  # (label, method, FusionConfig options)
    ("baseline", "baseline", {}),
    ("feedback, FiLM fc, p_eq 0.95", "feedback", {"film": "fc", "p_eq": 0.95}),
    ("feedback, FiLM fc, p_eq 0", "feedback", {"film": "fc", "p_eq": 0.0}),
    ("feedback, FiLM both, p_eq 0.95", "feedback", {"film": "both", "p_eq": 0.95}),
    ("feedback, FiLM both, p_eq 0", "feedback", {"film": "both", "p_eq": 0.0}),
    ("feedback, FiLM blocks, p_eq 0", "feedback", {"film": "blocks", "p_eq": 0.0}),
    ("noisy feedback, FiLM both", "noisy_feedback", {"film": "both"}),
    ("noisy feedback, FiLM fc", "noisy_feedback", {"film": "fc"}),
    ("ensemble, FiLM both", "ensemble", {"film": "both"}),
]


def _models(preset, film: str) -> Pretrained:
    torch.manual_seed(0)
    hpe, hpe_film = HPE(preset.hpe), HPE(replace(preset.hpe, film=film))
    for m in (hpe, hpe_film):
        m.init_pca(torch.randn(256, 21, 3) * 0.3)
        if m.channels_last_safe:  # as the training code: not for the smoke preset's 8-channel convs
            m.to_channels_last()
    return Pretrained(hpe, hpe_film, PoseLSTM(preset.har), {})


def fresh_method(preset, name: str, options: dict, film: str = "both"):
    """Fusion method ``name`` with ``options`` on freshly initialised models (``film``: the placement
    of the conditioned HPE when ``options`` names none), and an Adam optimiser over what it trains."""
    model = build(name, _models(preset, options.get("film", film)), preset.preprocess.cube_mm / 2,
                  method_config(name, **options))
    return model, adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def train_epoch(model, opt: torch.optim.Optimizer, batches: list[dict]) -> None:
    """A fine-tuning step on each batch, in training mode."""
    model.train()
    for batch in batches:
        train_step(model, opt, batch)


def evaluate(model, batches: list[dict]) -> None:
    """The deterministic forward on each batch, in eval mode under ``inference_mode``."""
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            model(batch["depth"], batch["centre"], batch["mask"])


def train_step(model, opt: torch.optim.Optimizer, batch: dict) -> None:
    """One fine-tuning step of a fusion method on a collated batch: forward, joint loss, backward, Adam."""
    loss = model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_sequences(preset_name: str) -> SequenceDataset:
    """The training sequences of a preset's synthetic data, from its crop cache."""
    fpha = FPHA(ensure_synthetic(preset_name))
    return SequenceDataset(get_cache(fpha, get_preset(preset_name).preprocess, progress=False), fpha.train)


def fixed_batches(data: SequenceDataset, size: int, n: int) -> list[dict]:
    """The first ``n`` collated batches of ``size`` sequences of ``data`` (fewer if it holds fewer:
    the smoke preset has fewer sequences than the defaults ask)."""
    return [collate_sequences([data[i] for i in range(b * size, (b + 1) * size)]) for b in range(min(n, len(data) // size))]


def run(preset_name: str = "cpu", batches: int = 12, repeats: int = 3) -> dict:
    preset = get_preset(preset_name)
    data = train_sequences(preset_name)
    B = preset.train_fuse.batch_size
    E = min(64, len(data) // 2)  # evaluation: two batches of E sequences
    fixed, evaluation = fixed_batches(data, B, batches), fixed_batches(data, E, 2)
    n_train, n_eval = len(fixed) * B, 2 * E
    rows = {}
    for label, name, options in VARIANTS:
        model, opt = fresh_method(preset, name, options)
        torch.manual_seed(0)
        t = timed(lambda: train_epoch(model, opt, fixed), repeats, warmup=1)
        e = timed(lambda: evaluate(model, evaluation), repeats, warmup=1)
        rows[label] = {"train_seq_per_s": n_train / t[0], "train_spread": [n_train / t[2], n_train / t[1]],
                       "eval_seq_per_s": n_eval / e[0], "eval_spread": [n_eval / e[2], n_eval / e[1]]}
    base = rows["baseline"]
    for r in rows.values():
        r["train_vs_baseline"] = r["train_seq_per_s"] / base["train_seq_per_s"]
        r["eval_vs_baseline"] = r["eval_seq_per_s"] / base["eval_seq_per_s"]
    frames = sum(int(b["mask"].sum()) for b in fixed)
    return {"preset": preset_name, "batch_size": B, "train_sequences": n_train, "train_frames": frames,
            "eval_sequences": n_eval, "repeats": repeats, "rows": rows,
            "fold": fold_gain(preset, fixed, evaluation, max(2 * repeats, 4))}


def fold_gain(preset, fixed: list[dict], evaluation: list[dict], pairs: int) -> dict:
    """The baseline with its frozen batch norms folded into the convolutions (the default,
    :mod:`handfuse.models.fold`) against the same model running them as separate modules.  The two
    alternate, run by run, and each pair gives a ratio (the machine's speed drifts between runs)."""
    model, opt = fresh_method(preset, "baseline", {})
    ratios = {"train": [], "eval": []}
    for _ in range(pairs + 1):  # the first pair warms up
        seconds = {}
        for plain in (False, True):
            with plain_batch_norm() if plain else contextlib.nullcontext():
                t0 = time.perf_counter()
                train_epoch(model, opt, fixed)
                t1 = time.perf_counter()
                evaluate(model, evaluation)
                seconds[plain] = (t1 - t0, time.perf_counter() - t1)
        for i, key in enumerate(("train", "eval")):
            ratios[key].append(seconds[True][i] / seconds[False][i])  # > 1: the fold is faster
    return {k: {"median": statistics.median(v[1:]), "spread": [min(v[1:]), max(v[1:])]} for k, v in ratios.items()}


def report(r: dict) -> None:
    print(f"fusion fine-tuning throughput, preset {r['preset']}, batch {r['batch_size']} sequences, "
          f"{r['train_sequences']} sequences ({r['train_frames']} frames) per timed run, median of {r['repeats']}")
    print(f"  {'method':34s} {'train seq/s':>12s} {'x baseline':>10s} {'eval seq/s':>11s} {'x baseline':>10s}")
    for label, v in r["rows"].items():
        print(f"  {label:34s} {v['train_seq_per_s']:12.1f} {v['train_vs_baseline']:10.2f} "
              f"{v['eval_seq_per_s']:11.1f} {v['eval_vs_baseline']:10.2f}")
    f = r["fold"]
    print(f"  frozen batch norms folded into the convolutions vs run as modules (baseline, paired runs): "
          f"train x{f['train']['median']:.2f} ({f['train']['spread'][0]:.2f}-{f['train']['spread'][1]:.2f}), "
          f"eval x{f['eval']['median']:.2f} ({f['eval']['spread'][0]:.2f}-{f['eval']['spread'][1]:.2f})")
    print("  targets (issue 7): feedback with FiLM fc >= 0.7 x baseline; ensemble <= 2.2 x baseline time (>= 0.45 x rate)")


def main() -> None:
    cli(__doc__, run, report, batches=12, repeats=3)


if __name__ == "__main__":
    main()
