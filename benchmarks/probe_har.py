"""Difficulty probe: how well can a small LSTM recognise the synthetic actions from TRUE poses?

Writes skeleton-only datasets (no rendering: seconds) and trains two probes on the
action split: an LSTM that sees the order of frames, and an order-blind
bag-of-frames MLP (mean over frames).  The ``cpu`` preset should put the LSTM at
70-90 % on the probe's held-out split and the bag of frames clearly lower.  Numbers are synthetic.

The probe never sees the data the results table is scored on: it generates the preset's
benchmark with another seed (``--data-seed``, default the preset's seed + 1000), so that
calibrating the difficulty knobs cannot tune them to the table's test split.

    python -m benchmarks.probe_har [--preset cpu] [--epochs 60] [--data-seed N] [--set style_deg=9 ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import torch
from torch import nn

from handfuse.config import get_preset
from handfuse.fpha import POSE_DIR, read_skeleton_file
from handfuse.datasets import POSE_SCALE_MM, pose_features
from handfuse.skeleton import ACTION_INDEX, CENTRE_JOINT, NUM_ACTIONS
from handfuse.synth.actions import LOOKALIKE_GROUPS
from handfuse.synth import generate, sequence_refs


def load(root, refs, max_len=64, order_free=False):
    """Padded (N, max_len, 63) features, labels and lengths.  The LSTM gets the recogniser's own
    normalisation (centred on the first frame's hand centre).  That centring leaks the order of
    frames (open_X starts at the cap, close_X ends there), so the bag of frames instead gets
    features centred on the sequence's mean hand centre, which time reversal leaves unchanged."""
    xs, ys, ls = [], [], []
    for r in refs:
        j = read_skeleton_file(root / POSE_DIR / r.key / "skeleton.txt")[:max_len]
        j = (j - j[:, CENTRE_JOINT].mean(0)) / POSE_SCALE_MM if order_free else pose_features(j)
        x = np.zeros((max_len, 63), np.float32)
        x[: len(j)] = j.reshape(len(j), -1)
        xs.append(x), ys.append(r.label), ls.append(len(j))
    return torch.tensor(np.stack(xs)), torch.tensor(ys), torch.tensor(ls)


class LSTMProbe(nn.Module):
    def __init__(self, hidden=100):
        super().__init__()
        self.lstm = nn.LSTM(63, hidden, batch_first=True)
        self.head = nn.Linear(hidden, NUM_ACTIONS)

    def forward(self, x, lengths):
        h, _ = self.lstm(x)  # (B, T, H)
        return self.head(h[torch.arange(len(x)), lengths - 1])


class BagProbe(nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.frame = nn.Sequential(nn.Linear(63, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, NUM_ACTIONS)

    def forward(self, x, lengths):
        mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).float()[..., None]
        return self.head((self.frame(x) * mask).sum(1) / mask.sum(1))


def accuracy(model, data, noise_mm=0.0, seed=0):
    """Test accuracy, optionally with pose error of noise_mm mean per-joint size as a stand-in for an
    HPE's: half a per-sequence offset of each joint (systematic), half a slow drift over frames."""
    x, y, l = data
    g = torch.Generator().manual_seed(seed)
    sigma = noise_mm / 100.0 / 1.596  # the mean norm of an isotropic 3-D N(0, s^2) error is 1.596 s
    offset = torch.randn(x.shape[0], 1, x.shape[2], generator=g)
    drift = torch.randn(x.shape, generator=g).cumsum(1) / torch.arange(1, x.shape[1] + 1).sqrt()[None, :, None]
    with torch.inference_mode():
        return (model(x + sigma * (offset + drift) / np.sqrt(2), l).argmax(1) == y).float().mean().item()


def train_probe(model, train, epochs, seed=0, lr=3e-3):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y, l = train
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 20):
            b = perm[i:i + 20]
            loss = nn.functional.cross_entropy(model(x[b], l[b]), y[b])
            opt.zero_grad(), loss.backward(), opt.step()
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="synth config overrides, e.g. style_deg=12")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="the calibration data's generator seed (default: the preset's + 1000; never the table's data)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table_seed = get_preset(args.preset).synth.seed
    data_seed = table_seed + 1000 if args.data_seed is None else args.data_seed
    if data_seed == table_seed:
        ap.error(f"--data-seed {data_seed} is the seed of the data the results table is scored on")
    cfg = dataclasses.replace(get_preset(args.preset).synth, render=False, seed=data_seed)
    for kv in args.set:
        k, v = kv.split("=")
        cfg = dataclasses.replace(cfg, **{k: type(getattr(cfg, k))(v)})
    with tempfile.TemporaryDirectory() as tmp:  # (the true poses are what the written skeleton holds)
        t0 = time.perf_counter()
        root = generate(f"{tmp}/data", cfg, progress=False)
        train_refs, test_refs = sequence_refs(cfg)  # skeleton-only trees carry no depth for the reader to check
        train, test = load(root, train_refs), load(root, test_refs)
        bag_train, bag_test = load(root, train_refs, order_free=True), load(root, test_refs, order_free=True)
        gen_s = time.perf_counter() - t0
    accs = {"lstm": [], "bag": [], "lstm, 8 mm noise": [], "lstm, 15 mm noise": [], "lstm, look-alikes": [], "lstm, the rest": []}
    lookalike = torch.isin(test[1], torch.tensor([ACTION_INDEX[a] for group in LOOKALIKE_GROUPS for a in group]))
    for seed in range(args.seeds):
        lstm = train_probe(LSTMProbe(), train, args.epochs, seed)
        accs["lstm"].append(accuracy(lstm, test))
        accs["lstm, look-alikes"].append(accuracy(lstm, tuple(t[lookalike] for t in test)))
        accs["lstm, the rest"].append(accuracy(lstm, tuple(t[~lookalike] for t in test)))
        accs["lstm, 8 mm noise"].append(accuracy(lstm, test, 8.0, seed))
        accs["lstm, 15 mm noise"].append(accuracy(lstm, test, 15.0, seed))
        accs["bag"].append(accuracy(train_probe(BagProbe(), bag_train, args.epochs, seed), bag_test))
    print(f"[synthetic, {args.preset} preset, calibration data of generator seed {data_seed} (the table's: {table_seed}), "
          f"{len(train[0])} train / {len(test[0])} held-out sequences, skeletons in {gen_s:.0f} s] overrides={args.set}")
    for k, v in accs.items():
        print(f"  {k:17s} held-out accuracy: {100 * np.mean(v):.1f} % (seeds: {[round(100 * a, 1) for a in v]})")


if __name__ == "__main__":
    main()
