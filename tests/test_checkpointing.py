"""Activation checkpointing of the pose estimators while fine-tuning (``FusionConfig.activation_checkpoint``).

Each method over the registry takes one training step twice from the same weights and the same
seed, without checkpointing and with it in chunks smaller than the batch: the loss, every
parameter's gradient, every buffer (batch-norm running statistics and batch counts) and the global
RNG state afterwards must agree.  The same with live batch norms and dropout (``freeze_norm=False``),
where a recomputation that counted its batch again, or drew other dropout masks, would show.  Other
tests check that the option does something: the backward recomputes the estimator, in chunks of the
asked size, and keeps fewer activations.  Tiny random models (the smoke preset's sizes) on a random
batch with padding: no data needed.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from conftest import random_fusion_models
from handfuse.config import PRESETS, get_preset
from handfuse.errors import ConfigError
from handfuse.finetune import resolved_config
from handfuse.methods import METHODS, build, method_config
from handfuse.skeleton import NUM_ACTIONS

HALF = get_preset("smoke").preprocess.cube_mm / 2
CHUNK = 4  # frames: the batch below holds 15 valid ones, so 4 chunks, the last one short


def _batch(seed: int = 0, crop: int = 32) -> dict:
    """Three sequences of 6, 5 and 4 frames (padded to 6): depth, centres, joints, labels, mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 5, 4])
    B, T = len(lengths), int(lengths.max())
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
    centre = torch.randn(B, T, 3, generator=g) * 20 + torch.tensor([0.0, 0.0, 400.0])
    joints = torch.randn(B, T, 21, 3, generator=g) * 0.3
    return {"depth": torch.rand(B, T, 1, crop, crop, generator=g) * 2 - 1, "centre": centre, "mask": mask,
            "joints": joints, "joints_mm": joints * HALF + centre[:, :, None], "length": lengths,
            "label": torch.randint(0, NUM_ACTIONS, (B,), generator=g)}


def _step(name: str, models, options: dict, batch: dict) -> dict:
    """One training step's loss, gradients, buffers and the RNG state after it, from fresh copies of ``models``."""
    model = build(name, models, HALF, method_config(name, **options))
    model.train()
    torch.manual_seed(1)  # the coins of p_eq, the noise, the dropout masks
    loss = model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)
    loss.backward()
    return {"loss": loss.detach(), "rng": torch.get_rng_state(),
            "grads": {k: p.grad for k, p in model.named_parameters() if p.requires_grad},
            "buffers": {k: b.clone() for k, b in model.named_buffers()}}


def _assert_same(off: dict, on: dict) -> None:
    torch.testing.assert_close(on["loss"], off["loss"], rtol=1e-5, atol=1e-7)
    assert torch.equal(on["rng"], off["rng"]), "checkpointing changed how much the global RNG was drawn from"
    assert off["grads"].keys() == on["grads"].keys()
    for k, g in off["grads"].items():
        if g is None:
            assert on["grads"][k] is None, k
            continue
        torch.testing.assert_close(on["grads"][k], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"gradient of {k}: {m}")
    assert off["buffers"].keys() == on["buffers"].keys()
    for k, b in off["buffers"].items():
        torch.testing.assert_close(on["buffers"][k], b, rtol=1e-5, atol=1e-7, msg=lambda m: f"buffer {k}: {m}")


# (method, FiLM placement, pose estimator, freeze_norm).  Not the ResNet's feedback with live batch norms:
# a step of one frame ends its 32-pixel crop in a 1x1 map, where a batch norm in training mode has no
# batch statistics (torch refuses, with or without checkpointing)
CASES = [(name, "both", "deepprior", freeze) for name in sorted(METHODS) for freeze in (True, False)] + [
    ("feedback", film, "deepprior", freeze) for film in ("fc", "blocks") for freeze in (True, False)] + [
    ("baseline", "both", "resnet", True), ("baseline", "both", "resnet", False), ("feedback", "both", "resnet", True)]


@pytest.mark.parametrize("name, film, hpe_model, freeze_norm", CASES)
def test_checkpointing_changes_no_number(name, film, hpe_model, freeze_norm):
    models = random_fusion_models(0, False, film, hpe_model=hpe_model)
    # p_eq 0.5: some frames fed w_eq in one batch, the others step by step; ensemble: both HPEs train
    options = {"film": film, "p_eq": 0.5, "freeze_norm": freeze_norm, "train_hpe1": True}
    batch = _batch()
    off = _step(name, models, options, batch)
    on = _step(name, models, {**options, "activation_checkpoint": CHUNK}, batch)
    _assert_same(off, on)
    hpe_grads = [g for k, g in off["grads"].items() if k.startswith("hpe") and g is not None]
    assert hpe_grads and any(bool(g.abs().sum() > 0) for g in hpe_grads)  # the pose estimator did learn
    before = {k: b for k, b in build(name, models, HALF, method_config(name, **options)).named_buffers()}
    moved = [k for k, b in off["buffers"].items() if "running_mean" in k and not torch.equal(b, before[k])]
    assert bool(moved) == (not freeze_norm)  # live batch norms did update their statistics, once in both runs


def _trunk_batches(model) -> tuple[list[int], list]:
    """Record the batch size of every call of the first residual block of each HPE of ``model`` (forward and
    recomputation)."""
    sizes = []
    handles = [m.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
               for name, m in model.named_modules() if name.endswith("blocks.0")]
    return sizes, handles


@pytest.mark.parametrize("name, film", [("baseline", "both"), ("feedback", "both"), ("feedback", "fc"),
                                        ("ensemble", "both")])
def test_the_backward_recomputes_the_estimator_in_chunks(name, film):
    models, batch = random_fusion_models(0, False, film), _batch()
    runs = {}
    for chunk in (0, CHUNK):
        options = {"film": film, "p_eq": 0.5, "train_hpe1": True, "activation_checkpoint": chunk}
        model = build(name, models, HALF, method_config(name, **options))
        model.train()
        sizes, handles = _trunk_batches(model)
        torch.manual_seed(1)
        loss = model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)
        forward = list(sizes)
        loss.backward()
        runs[chunk] = forward, sizes[len(forward):]
        for h in handles:
            h.remove()
    (forward_off, recomputed_off), (forward_on, recomputed_on) = runs[0], runs[CHUNK]
    assert recomputed_off == [] and max(forward_off) > CHUNK  # nothing run again; whole batches at once
    assert sum(forward_on) == sum(forward_off)  # the same frames through the estimators,
    assert max(forward_on) <= CHUNK  # in chunks of at most CHUNK frames,
    assert sorted(recomputed_on) == sorted(forward_on)  # each run once more by the backward


def test_live_batch_norm_keeps_a_call_whole():
    """With batch statistics the frames of a call are not independent: one chunk, recomputed once."""
    models, batch = random_fusion_models(0, False, "both"), _batch()
    model = build("baseline", models, HALF, method_config("baseline", freeze_norm=False, activation_checkpoint=CHUNK))
    model.train()
    sizes, _ = _trunk_batches(model)
    model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch).backward()
    assert sizes == [int(batch["mask"].sum())] * 2


def _saved_bytes(name: str, models, chunk: int, batch: dict) -> int:
    """Bytes of the tensors a training forward keeps for the backward."""
    model = build(name, models, HALF, method_config(name, film="both", p_eq=0.5, activation_checkpoint=chunk))
    model.train()
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(model(batch["depth"], batch["centre"], batch["mask"]), batch)
    return sum(total)


@pytest.mark.parametrize("name", ["baseline", "feedback"])
def test_checkpointing_keeps_fewer_activations(name):
    models, batch = random_fusion_models(0, False, "both"), _batch()
    off, on = _saved_bytes(name, models, 0, batch), _saved_bytes(name, models, CHUNK, batch)
    assert on < 0.5 * off, (on, off)


def test_on_at_paper_size_and_off_for_the_cpu_and_smoke_presets():
    assert set(PRESETS) == {"smoke", "cpu", "paper"}  # a new preset must say where it stands
    assert get_preset("paper").activation_checkpoint > 0
    for preset in ("cpu", "smoke"):
        assert get_preset(preset).activation_checkpoint == 0
    for name in METHODS:  # the resolved configurations the runs use
        assert resolved_config(name, get_preset("paper"), {}).activation_checkpoint == get_preset("paper").activation_checkpoint
        assert resolved_config(name, get_preset("cpu"), {}).activation_checkpoint == 0
        assert resolved_config(name, get_preset("paper"), {"activation_checkpoint": 0}).activation_checkpoint == 0


@pytest.mark.parametrize("value", [-1, 2.5, True, "16"])
def test_a_bad_chunk_size_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="fusion.activation_checkpoint"):
        method_config("feedback", activation_checkpoint=value)
    with pytest.raises(ConfigError, match="'activation_checkpoint'"):
        replace(get_preset("paper"), activation_checkpoint=value)


def test_none_means_off():
    assert method_config("baseline", activation_checkpoint=None) == method_config("baseline")


def test_memory_benchmark_measures_each_row_in_a_process_of_its_own():
    """``python -m benchmarks.memory``'s plumbing at a tiny size (its numbers are not checked: shared CPUs)."""
    from benchmarks import memory

    r = memory.run(batch=1, frames=2, steps=1, device="cpu")
    chunk = get_preset("paper").activation_checkpoint
    assert [(x["method"], x["activation_checkpoint"]) for x in r["rows"]] == [
        ("baseline", 0), ("baseline", chunk), ("feedback", 0), ("feedback", chunk)]
    assert len({x["pid"] for x in r["rows"]}) == 4  # a fresh process per row
    for x in r["rows"]:
        assert 0 < x["rss_before_gib"] <= x["peak_before_gib"] <= x["peak_rss_gib"]
        assert x["step_gib"] == x["peak_rss_gib"] - x["rss_before_gib"] and len(x["step_s"]) == 1
        assert x["options"]["film"] == get_preset("paper").film and x["crop"] == 128
        if x["activation_checkpoint"] == 0:
            assert x["time_vs_off"] == 1.0 and x["peak_vs_off"] == 1.0
        else:
            assert math.isfinite(x["time_vs_off"]) and x["time_vs_off"] > 0
