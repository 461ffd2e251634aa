"""Checks every fusion method must pass with any pair of models, shared by tests/test_methods.py (the
default pair, in detail) and tests/test_generality.py (every registered pair).

Each takes pre-trained models (``handfuse.finetune.Pretrained``, random ones from
``conftest.random_fusion_models``) and a collated batch of smoke sequences that contains padding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from handfuse.methods import build, evaluate_sequences, method_config
from handfuse.methods.baseline import SequentialBaseline
from handfuse.models.interfaces import PoseEstimator
from handfuse.tasks import HPETask


def forward(model, batch: dict) -> dict:
    return model(batch["depth"], batch["centre"], batch["mask"])


def check_forward_backward(model, batch: dict, attention: bool) -> dict:
    """Shapes, finite outputs, zero padding, then a backward pass whose gradients reach the recogniser
    and every trainable pose estimator, and no frozen parameter.  Returns the outputs."""
    model.train()
    out = forward(model, batch)
    B, T = batch["mask"].shape
    assert out["joints_mm"].shape == (B, T, 21, 3) and out["logits"].shape == (B, 45)
    assert bool(torch.isfinite(out["joints_mm"]).all()) and bool(torch.isfinite(out["logits"]).all())
    assert bool((out["joints_mm"][~batch["mask"]] == 0).all()), "padding frames must stay zero"
    assert (out["attention"] is not None) == attention
    model.loss(out, batch).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(float(p.grad.abs().sum()) > 0 for p in trainable if p.grad is not None)
    estimators = [m for m in model.children() if isinstance(m, PoseEstimator) and any(p.requires_grad for p in m.parameters())]
    assert estimators, "no pose estimator is trained"
    for part in [model.har, *estimators]:
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters()), \
            f"no gradient reaches the {type(part).__name__}"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    return out


def check_untrained_baseline_is_the_hpe(models, cache, seqs, refs, half: float) -> None:
    """The untrained chain's pose error is the standalone estimator's on the same frames."""
    chained = evaluate_sequences(build("baseline", models, half), seqs, batch_size=4)
    alone = HPETask(cache, {"test": refs}).evaluate(models.hpe, "test", None)
    assert chained["error_mm"] == pytest.approx(alone["error_mm"], rel=1e-6)


def check_feedback_fed_w_eq_is_the_conditioned_hpe(models, batch: dict, film: str, half: float) -> None:
    """Feedback that always feeds w_eq (p_eq = 1 in training, eval_feed="w_eq" in evaluation) is the
    baseline chain of the conditioned estimator: the fed action and the stepping change nothing."""
    reference = forward(SequentialBaseline(models.hpe_film, models.har, half).eval(), batch)  # fed w_eq (None)
    for training, cfg in ((True, method_config("feedback", p_eq=1.0, film=film)),
                          (False, method_config("feedback", eval_feed="w_eq", film=film))):
        model = build("feedback", models, half, cfg).train(training)
        with torch.no_grad():
            out = forward(model, batch)
        torch.testing.assert_close(out["joints_mm"], reference["joints_mm"], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out["logits"], reference["logits"], atol=1e-4, rtol=1e-5)
        assert bool(out["fed_w_eq"][batch["mask"]].all())


def check_feedback_feeds_the_previous_action(models, batch: dict, film: str, half: float) -> None:
    """Every frame's pose, recomputed one at a time from the previous step's logits (the naive
    unroll), equals what the batched implementation returned, and feeding predictions moves poses."""
    model = build("feedback", models, half, method_config("feedback", film=film)).eval()
    with torch.no_grad():
        out = forward(model, batch)
        hpe = model.hpe
        for b in range(len(batch["mask"])):
            n = int(batch["length"][b])
            actions = torch.cat([torch.full((1, 45), 1 / 45), torch.softmax(out["step_logits"][b, : n - 1], -1)])
            naive = hpe(batch["depth"][b, :n], actions)["joints"] * half + batch["centre"][b, :n, None]
            torch.testing.assert_close(out["joints_mm"][b, :n], naive, atol=1e-4, rtol=1e-5)
        w_eq = forward(build("feedback", models, half, method_config("feedback", eval_feed="w_eq", film=film)).eval(),
                       batch)
    moved = (out["joints_mm"] - w_eq["joints_mm"]).norm(dim=-1)[batch["mask"]]
    assert float(moved[batch["mask"][batch["mask"]]].max()) > 1.0, "feeding predictions changed no pose"


def check_ensemble_first_pass(models, batch: dict, half: float, attention: bool) -> None:
    """With eta = zeta = 0 the ensemble's outputs are its first pass (the baseline chain), and its
    second pass is HPE2 fed the first pass's sequence action on every frame, which moves the poses."""
    first = forward(SequentialBaseline(models.hpe, models.har, half).eval(), batch)
    model = build("ensemble", models, half, method_config("ensemble", eta=0.0, zeta=0.0, attention=attention)).eval()
    with torch.no_grad():
        out = forward(model, batch)
    torch.testing.assert_close(out["joints_mm"], first["joints_mm"])
    torch.testing.assert_close(out["logits"], torch.log_softmax(first["logits"], -1), atol=1e-5, rtol=1e-5)
    mask = batch["mask"]
    fed = torch.softmax(first["logits"], -1)[:, None].expand(*mask.shape, 45)[mask]
    with torch.no_grad():
        second = model.hpe2(batch["depth"][mask], fed)["joints"] * half + batch["centre"][mask][:, None]
    torch.testing.assert_close(out["second"]["joints_mm"][mask], second, atol=1e-4, rtol=1e-5)
    assert float((second - first["joints_mm"][mask].detach()).norm(dim=-1).max()) > 1.0


def check_deterministic_evaluation(model, seqs) -> None:
    """Evaluation draws no random numbers and does not depend on the batching (other padding)."""
    state = torch.get_rng_state()
    first = evaluate_sequences(model, seqs, batch_size=4)
    assert torch.equal(state, torch.get_rng_state()), "evaluation drew random numbers"
    torch.manual_seed(123)
    second = evaluate_sequences(model, seqs, batch_size=3)  # other batches, other padding
    np.testing.assert_allclose(first["logits"], second["logits"], atol=1e-4)
    assert first["error_mm"] == pytest.approx(second["error_mm"], rel=1e-6)
