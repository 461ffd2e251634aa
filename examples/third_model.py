"""Plugging in a third model: a GRU action recogniser, registered as "gru" and run through a fusion method.

tests/test_generality.py runs this file; docs/extending.md shows it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from handfuse.models.har import IN_FEATURES, TemporalAttention, sequence_loss, sequence_readout
from handfuse.models.registry import HARS, register
from handfuse.skeleton import NUM_ACTIONS


@dataclass(frozen=True)
class GRUConfig:
    hidden: int = 32
    attention: bool = False  # every recogniser's config has it: pre-training sets it


class PoseGRU(nn.Module):
    """A GRU over the frames' 63 pose numbers: the ActionRecogniser interface, nothing more."""

    def __init__(self, cfg: GRUConfig = GRUConfig()):
        super().__init__()
        self.cfg = cfg
        self.gru = nn.GRU(IN_FEATURES, cfg.hidden, batch_first=True)
        self.classifier = nn.Linear(cfg.hidden, NUM_ACTIONS)
        self.attention = TemporalAttention(NUM_ACTIONS, cfg.hidden) if cfg.attention else None

    def forward(self, joints, mask=None, labels=None):
        B, T = joints.shape[:2]
        valid = (joints.new_ones(B, T, dtype=torch.bool) if mask is None else mask)[..., None]  # (B, T, 1)
        hidden = self.gru(torch.where(valid, joints.reshape(B, T, IN_FEATURES), 0.0))[0]  # causal: (B, T, H)
        hidden = torch.where(valid, hidden, 0.0)
        step_logits = torch.where(valid, self.classifier(hidden), 0.0)  # (B, T, 45)
        logits, attention = self.readout(step_logits, hidden, valid[..., 0])
        out = {"step_logits": step_logits, "logits": logits, "attention": attention, "hidden": hidden}
        return out if labels is None else {**out, "loss": self.loss(out, labels, mask)}

    def loss(self, out, labels, mask=None):
        return sequence_loss(out, labels, mask, step_loss=0.0)

    def readout(self, step_logits, hidden, mask):
        return sequence_readout(self.attention, step_logits, hidden, mask)

    def init_state(self, batch):
        return self.classifier.weight.new_zeros(1, batch, self.cfg.hidden)  # (layers, B, H)

    def step(self, joints_t, state):
        out, state = self.gru(joints_t.reshape(len(joints_t), 1, IN_FEATURES), state)  # (B, 1, H)
        return self.classifier(out[:, 0]), state

    def hidden(self, state):
        return state[-1]  # (B, H)


def plug_in() -> None:
    """Register the GRU by name; its config comes from the preset (here: the LSTM's width)."""
    register(HARS, "gru", PoseGRU, lambda preset: GRUConfig(hidden=preset.har.hidden))


def demo() -> tuple[nn.Module, torch.Tensor]:
    """Action feedback with DeepPrior++ and the GRU: one forward and backward on random smoke-sized
    inputs.  Returns the method (its gradients set) and the joint loss."""
    from dataclasses import replace

    from handfuse.config import get_preset
    from handfuse.finetune import Pretrained
    from handfuse.methods import build
    from handfuse.models.registry import har_entry, hpe_entry

    preset, hpe, gru = get_preset("smoke"), hpe_entry("deepprior"), har_entry("gru")
    models = Pretrained(hpe.build(hpe.config(preset)), hpe.build(replace(hpe.config(preset), film="fc")),
                        gru.build(gru.config(preset)), {}, "deepprior", "gru")
    feedback = build("feedback", models, half_cube_mm=125.0).train()
    B, T, S = 2, 4, preset.preprocess.crop
    batch = {"depth": torch.rand(B, T, 1, S, S) * 2 - 1, "centre": torch.full((B, T, 3), 400.0),
             "mask": torch.tensor([[True] * 4, [True] * 2 + [False] * 2]),
             "joints": torch.randn(B, T, 21, 3) * 0.3, "label": torch.tensor([0, 7])}
    loss = feedback.loss(feedback(batch["depth"], batch["centre"], batch["mask"]), batch)
    loss.backward()  # the gradients reach the GRU and the HPE
    return feedback, loss


if __name__ == "__main__":
    plug_in()
    print(f"feedback with DeepPrior++ and a GRU: loss {demo()[1].item():.4f}")
