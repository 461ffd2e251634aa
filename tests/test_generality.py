"""Generality: every fusion method runs with every registered pose estimator and action recogniser.

The methods reach the models only through the interfaces of ``handfuse.models.interfaces``;
here the method registry is run over every pair of the model registry (2 x 2): forward, backward,
deterministic evaluation and the identities the study relies on (the same checks as
tests/test_methods.py, from tests/fusion_checks.py).  Then the second models on their own (the
ResNet regressor's FiLM identity and speed split; the transformer's causality, padding invariance
and stepping), the registry, run names and CLI options, and a third model plugged in from
``examples/third_model.py`` (docs/extending.md shows it: tests/test_docs.py).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import random_fusion_models
from fusion_checks import (check_deterministic_evaluation, check_ensemble_first_pass,
                           check_feedback_fed_w_eq_is_the_conditioned_hpe, check_feedback_feeds_the_previous_action,
                           check_forward_backward, check_untrained_baseline_is_the_hpe)
from handfuse import finetune, standalone
from handfuse.config import get_preset
from handfuse.errors import ConfigError
from handfuse.methods import METHODS, build, method_config
from handfuse.models.film import FiLM, uniform_action
from handfuse.models.hpe import FILM_PLACEMENTS
from handfuse.models.interfaces import ActionRecogniser, PoseEstimator, PosePrior
from handfuse.models.registry import HARS, HPES, har_entry, hpe_entry, register
from handfuse.models.resnet_hpe import ResNetHPE, ResNetHPEConfig
from handfuse.models.transformer_har import TransformerHAR, TransformerHARConfig
from handfuse.skeleton import NUM_ACTIONS, NUM_JOINTS
from handfuse.train import FitResult, recorded, run_digest

PRESET = get_preset("smoke")
HALF = PRESET.preprocess.cube_mm / 2
ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(h, a) for h in sorted(HPES) for a in sorted(HARS)]
PAIR_IDS = [f"{h}+{a}" for h, a in PAIRS]


@pytest.fixture
def data(smoke_fusion_data):
    return smoke_fusion_data  # (fpha, cache, sequences, batch): see conftest


def _models(pair: tuple[str, str], seed: int, attention: bool = False, film: str = "both"):
    return random_fusion_models(seed, attention, film, hpe_model=pair[0], har_model=pair[1])


# ----------------------------------------------------------------------------- the interfaces


@pytest.mark.parametrize("name", sorted(HPES))
def test_every_registered_estimator_implements_the_interface(name):
    entry = hpe_entry(name)
    plain, conditioned = entry.build(entry.config(PRESET)), entry.build(replace(entry.config(PRESET), film="fc"))
    assert isinstance(plain, PoseEstimator) and not plain.accepts_action and conditioned.accepts_action
    assert isinstance(plain, PosePrior) == (name == "deepprior")  # only DeepPrior++ has a prior
    assert not isinstance(plain, ActionRecogniser)


@pytest.mark.parametrize("name", sorted(HARS))
def test_every_registered_recogniser_implements_the_interface(name):
    entry = har_entry(name)
    model = entry.build(entry.config(PRESET))
    assert isinstance(model, ActionRecogniser) and not isinstance(model, PoseEstimator)


# ----------------------------------------------------------------------------- every method, every pair


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_forward_backward_over_every_pair(name, pair, data):
    _, _, _, batch = data
    attention = pair[1] == "transformer"  # the attention readout with one recogniser, the last step with the other
    model = build(name, _models(pair, 0, attention), HALF, method_config(name, attention=attention, p_eq=0.5))
    check_forward_backward(model, batch, attention)


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_evaluation_is_deterministic_over_every_pair(name, pair, data):
    _, _, seqs, _ = data
    check_deterministic_evaluation(build(name, _models(pair, 6), HALF, method_config(name, p_eq=0.5)), seqs)


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_untrained_baseline_error_is_the_standalone_estimators(pair, data):
    fpha, cache, seqs, _ = data
    check_untrained_baseline_is_the_hpe(_models(pair, 1), cache, seqs, fpha.test[:6], HALF)


@pytest.mark.parametrize("film", ["both", "fc", "blocks"])
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_feedback_fed_w_eq_is_the_conditioned_estimator_over_every_pair(pair, film, data):
    _, _, _, batch = data
    check_feedback_fed_w_eq_is_the_conditioned_hpe(_models(pair, 2, True, film), batch, film, HALF)


@pytest.mark.parametrize("film", ["fc", "blocks"])
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_feedback_feeds_the_previous_action_over_every_pair(pair, film, data):
    _, _, _, batch = data
    check_feedback_feeds_the_previous_action(_models(pair, 3, False, film), batch, film, HALF)


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_ensemble_with_eta_zeta_0_is_its_first_pass_over_every_pair(pair, data):
    _, _, _, batch = data
    check_ensemble_first_pass(_models(pair, 4, True), batch, HALF, attention=True)


# ----------------------------------------------------------------------------- the ResNet regressor

TINY_RESNET = dict(crop=32, stem_channels=8, widths=(8, 16), strides=(1, 2), blocks=(1, 1), fc=32)


def _resnet(film: str = "none", seed: int = 0, **kw) -> ResNetHPE:
    torch.manual_seed(seed)
    return ResNetHPE(ResNetHPEConfig(**{**TINY_RESNET, **kw}, film=film)).eval()


def _randomise_film(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FiLM):
                m.linear.weight.copy_(torch.randn(m.linear.weight.shape, generator=g) * 0.5)


def _crops(b: int, crop: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, crop, crop, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("film", ["blocks", "fc", "both"])
def test_resnet_film_is_the_identity_at_init_and_modulates_once_it_learns(film):
    plain, conditioned = _resnet(), _resnet(film, seed=5)
    missing, unexpected = conditioned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("film" in k for k in missing)
    x, one_hot = _crops(4), torch.nn.functional.one_hot(torch.full((4,), 3), NUM_ACTIONS).float()
    with torch.no_grad():
        reference = plain(x)["joints"]
        for action in (None, uniform_action(4), one_hot):
            assert torch.equal(conditioned(x, action)["joints"], reference)
        _randomise_film(conditioned)
        w_eq = conditioned(x, uniform_action(4))["joints"]
        assert not torch.allclose(conditioned(x, one_hot)["joints"], w_eq, atol=1e-4)
        assert torch.equal(conditioned(x)["joints"], w_eq)  # None still means w_eq
    expected = {"blocks": 2, "fc": 1, "both": 3}[film]
    assert sum(isinstance(m, FiLM) for m in conditioned.modules()) == expected


@pytest.mark.parametrize("film", FILM_PLACEMENTS)
def test_resnet_before_and_after_action_compose_to_the_forward(film):
    model = _resnet(film)
    _randomise_film(model)
    x, action = _crops(3), torch.softmax(torch.randn(3, NUM_ACTIONS), -1)
    with torch.no_grad():
        split = model.after_action(model.before_action(x), action)["joints"]
        torch.testing.assert_close(split, model(x, action)["joints"])
        if film in ("none", "fc"):  # the trunk ignores the action: computed once per frame
            assert model.before_action(x).shape == (3, TINY_RESNET["fc"])


@pytest.mark.parametrize("film", FILM_PLACEMENTS)
def test_resnet_shapes_gradients_and_loss(film):
    model = _resnet(film).train()
    target = torch.randn(3, NUM_JOINTS, 3) * 0.3
    out = model(_crops(3), torch.softmax(torch.randn(3, NUM_ACTIONS), -1), target)
    assert out["joints"].shape == (3, NUM_JOINTS, 3)
    torch.testing.assert_close(out["loss"], torch.nn.functional.mse_loss(out["joints"], target))
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, f"{name} gets no gradient"  # FiLM too, although zero at init


def test_resnet_channels_last_gives_the_same_output():
    model = _resnet(stem_channels=16, widths=(16, 16))
    assert model.channels_last_safe and not _resnet().channels_last_safe  # 8 channels: kept out
    x = _crops(2)
    with torch.no_grad():
        reference = model(x)["joints"]
        model.to_channels_last()
        assert model.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x)["joints"], reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key, value", [("crop", 8), ("widths", ()), ("strides", (2, 3, 1, 1)), ("blocks", (1,)),
                                        ("stem_kernel", 4), ("pool", 0), ("fc", 0), ("dropout", 1.0), ("film", "conv")])
def test_resnet_config_refuses_impossible_values_naming_them(key, value):
    with pytest.raises(ConfigError, match=f"resnet_hpe.{key}"):
        ResNetHPEConfig(**{key: value})


# ----------------------------------------------------------------------------- the temporal transformer


def _transformer(attention: bool = False, positions: str = "sinusoidal", dropout: float = 0.0, seed: int = 0,
                 **kw) -> TransformerHAR:
    torch.manual_seed(seed)
    cfg = TransformerHARConfig(d_model=16, heads=2, layers=2, ff=32, dropout=dropout, positions=positions,
                               attention=attention, **kw)
    return TransformerHAR(cfg)


def _sequences(lengths: list[int], seed: int = 0, pad: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Joints (B, T, 21, 3) with garbage (large values, or ``pad``) after each length, and the mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    joints = torch.randn(len(lengths), T, NUM_JOINTS, 3, generator=g) * 0.5
    garbage = torch.randn(joints.shape, generator=g) * 100 if pad is None else torch.full(joints.shape, pad)
    return torch.where(mask[..., None, None], joints, garbage), mask


VARIANTS = [(a, p) for a in (False, True) for p in ("sinusoidal", "learned")]
VARIANT_IDS = [f"{'att' if a else 'last'}-{p}" for a, p in VARIANTS]


@pytest.mark.parametrize("attention, positions", VARIANTS, ids=VARIANT_IDS)
def test_transformer_padding_never_changes_a_prediction(attention, positions):
    model = _transformer(attention, positions).eval()
    joints, mask = _sequences([9, 5, 9], seed=1)  # sequence 1 is padded by 4 garbage steps
    with torch.no_grad():
        batched, alone = model(joints, mask), model(joints[1:2, :5])
    torch.testing.assert_close(batched["logits"][1], alone["logits"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched["step_logits"][1, :5], alone["step_logits"][0], atol=1e-5, rtol=1e-5)
    assert bool((batched["step_logits"][1, 5:] == 0).all()) and bool((batched["hidden"][1, 5:] == 0).all())
    if attention:
        torch.testing.assert_close(batched["attention"][1, :5], alone["attention"][0], atol=1e-6, rtol=1e-5)
        assert bool((batched["attention"][1, 5:] == 0).all())
        torch.testing.assert_close(batched["attention"].sum(1), torch.ones(3))


@pytest.mark.parametrize("attention", [False, True], ids=["last", "att"])
def test_transformer_non_finite_padding_is_harmless_forward_and_backward(attention):
    labels, grads = torch.tensor([1, 2]), []
    for pad in (0.0, float("nan"), float("inf")):
        joints, mask = _sequences([6, 3], seed=7, pad=pad)
        model = _transformer(attention)
        out = model(joints, mask, labels)
        out["loss"].backward()
        assert bool(torch.isfinite(out["step_logits"]).all()) and bool(torch.isfinite(out["logits"]).all())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0])


def test_transformer_is_causal():
    """Changing frame t changes no step before t: the action after frame t-1 is known before frame t."""
    model = _transformer().eval()
    joints, _ = _sequences([8], seed=2)
    later = joints.clone()
    later[:, 5:] += 1.0
    with torch.no_grad():
        a, b = model(joints)["step_logits"], model(later)["step_logits"]
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert float((a[:, 5:] - b[:, 5:]).abs().max()) > 1e-3


@pytest.mark.parametrize("attention, positions", VARIANTS, ids=VARIANT_IDS)
def test_transformer_stepping_reproduces_the_whole_sequence(attention, positions):
    model = _transformer(attention, positions, dropout=0.3).eval()
    joints, mask = _sequences([8, 5, 2], seed=5)
    with torch.no_grad():
        full = model(joints, mask)
        state, steps, hidden = model.init_state(3), [], []
        for t in range(joints.shape[1]):
            logits_t, state = model.step(joints[:, t], state)
            steps.append(logits_t)
            hidden.append(model.hidden(state))
        steps, hidden = torch.stack(steps, 1), torch.stack(hidden, 1)  # (B, T, C), (B, T, D)
        torch.testing.assert_close(steps[mask], full["step_logits"][mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[mask], full["hidden"][mask], atol=1e-5, rtol=1e-5)
        logits, weights = model.readout(torch.where(mask[..., None], steps, 0.0), hidden, mask)
    torch.testing.assert_close(logits, full["logits"], atol=1e-5, rtol=1e-5)
    if attention:
        torch.testing.assert_close(weights, full["attention"], atol=1e-6, rtol=1e-5)


def test_transformer_steps_through_a_key_value_cache_that_carries_gradients():
    """Each step runs one token against the cache: the cache grows by one step per frame, and in
    training mode (no dropout) the stepped logits and their gradients are the whole forward's."""
    model = _transformer(dropout=0.0).train()
    joints, _ = _sequences([6, 6], seed=2)
    joints.requires_grad_(True)
    state = model.init_state(2)
    steps = []
    for t in range(6):
        logits_t, state = model.step(joints[:, t], state)
        steps.append(logits_t)
        assert [tuple(k.shape) for k, _ in state[0]] == [(2, model.cfg.heads, t + 1, model.cfg.d_model // model.cfg.heads)] * model.cfg.layers
    stepped = torch.stack(steps, 1)
    (grad_step,) = torch.autograd.grad(stepped.square().sum(), joints)
    full = model(joints)["step_logits"]
    (grad_full,) = torch.autograd.grad(full.square().sum(), joints)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_step, grad_full, atol=1e-5, rtol=1e-4)
    assert float(grad_step[:, -1].abs().sum()) > 0  # the last frame reaches its own logits


def test_transformer_positions_matter_and_learned_ones_have_a_length_limit():
    model = _transformer().eval()
    joints = torch.randn(1, 1, NUM_JOINTS, 3).expand(1, 6, NUM_JOINTS, 3)  # the same pose six times
    with torch.no_grad():
        steps = model(joints)["step_logits"][0]
    assert float((steps[0] - steps[-1]).abs().max()) > 1e-4  # only the position tells the steps apart
    with pytest.raises(ValueError, match="max_len"):
        _transformer(positions="learned", max_len=4)(joints)


@pytest.mark.parametrize("key, value", [("d_model", 0), ("heads", 3), ("layers", 0), ("ff", 0), ("dropout", 1.0),
                                        ("positions", "rotary"), ("max_len", 0), ("attention", "yes"),
                                        ("step_loss", -1.0)])
def test_transformer_config_refuses_impossible_values_naming_them(key, value):
    with pytest.raises(ConfigError, match=f"transformer_har.{key}"):
        TransformerHARConfig(**{key: value})


# ----------------------------------------------------------------------------- registry, run names, CLI


def test_unknown_model_names_are_refused_listing_the_registered_ones():
    with pytest.raises(ConfigError, match=r"hpe_model.*\['deepprior', 'resnet'\]"):
        hpe_entry("v2v")
    with pytest.raises(ConfigError, match=r"har_model.*\['lstm', 'transformer'\]"):
        har_entry("stgcn")
    with pytest.raises(ValueError, match="already registered"):
        register(HARS, "lstm", TransformerHAR, lambda preset: preset.transformer_har)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_every_preset_sizes_every_model_to_its_crops(preset):
    from handfuse.models.hpe import count_flops

    P = get_preset(preset)
    flops = {}
    for name, entry in HPES.items():
        cfg = entry.config(P)
        assert cfg.crop == P.preprocess.crop
        flops[name] = count_flops(entry.build(cfg))
    assert all(f > 0 for f in flops.values())
    with pytest.raises(ConfigError, match="resnet_hpe.crop"):
        replace(P, resnet_hpe=replace(P.resnet_hpe, crop=P.preprocess.crop * 2))


class _Captured(Exception):
    pass


@pytest.fixture
def captured_runs(monkeypatch):
    """Pre-training and fine-tuning that record (run folder, config) instead of training."""
    runs = []

    def fake_fit(model, task, cfg, run, config, progress=True):
        runs.append((Path(run).name, {**config, "train": recorded(cfg)}))  # the training settings as fit records them
        return FitResult(config={**config, "train": recorded(cfg)}, run_dir=str(run), test={"error_mm": 0.0})

    for module in (standalone, finetune):
        monkeypatch.setattr(module, "fit", fake_fit)
    return runs


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_run_names_carry_the_models_and_the_default_pairs_are_unchanged(pair, captured_runs, data, tmp_path):
    fpha, cache, _, _ = data
    models = finetune.pretrained(fpha, PRESET, 0, attention=True, film="fc", cache=cache, progress=False,
                               hpe_model=pair[0], har_model=pair[1])
    finetune.finetune("feedback", models, fpha, PRESET, method_config("feedback", film="fc"), 0, cache=cache,
                      root=tmp_path, progress=False)
    (hpe_run, hpe_config), (har_run, har_config), (fuse_run, _) = captured_runs
    default = pair == ("deepprior", "lstm")
    assert hpe_run.startswith("hpe-fc-" if pair[0] == "deepprior" else f"hpe-{pair[0]}-fc-")
    assert har_run.startswith("har-att-" if pair[1] == "lstm" else f"har-{pair[1]}-att-")
    assert fuse_run.startswith("fuse-feedback-" + ("" if default else f"{pair[0]}-{pair[1]}-"))
    assert re.fullmatch(r"fuse-feedback-([a-z]+-[a-z]+-)?[0-9a-f]{8}-seed0", fuse_run)
    # a default model's run config is what it was before models had names: the same digest, so the
    # runs already made are found again; another model's config names it
    assert ("hpe_model" in hpe_config) == (pair[0] != "deepprior")
    assert ("har_model" in har_config) == (pair[1] != "lstm")
    for run, config in captured_runs[:2]:
        assert run_digest(config) in run
    assert isinstance(models.hpe, type(hpe_entry(pair[0]).build(hpe_entry(pair[0]).config(PRESET))))
    assert isinstance(models.har, type(har_entry(pair[1]).build(har_entry(pair[1]).config(PRESET))))


@pytest.mark.parametrize("args, name", [(["hpe", "--hpe-model", "v2v"], "--hpe-model"),
                                        (["har", "--har-model", "stgcn"], "--har-model"),
                                        (["fusion", "--har-model", "gru"], "--har-model")])
def test_cli_refuses_unknown_models_listing_the_registered_ones(args, name, tmp_path):
    done = subprocess.run([sys.executable, "-m", "handfuse", "train", *args, "--preset", "smoke", "--runs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and name in done.stderr, done.stderr[-500:]
    allowed = sorted(HPES) if name == "--hpe-model" else sorted(HARS)
    assert str(allowed) in done.stderr
    assert not any(tmp_path.iterdir()), "a refused command must not start any work"


# ----------------------------------------------------------------------------- a third model, plugged in


def _load_example():
    spec = importlib.util.spec_from_file_location("third_model", ROOT / "examples" / "third_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def third_model():
    """examples/third_model.py with its GRU registered as "gru" (unregistered afterwards)."""
    example = _load_example()
    example.plug_in()
    yield example
    HARS.pop("gru")


def test_the_worked_example_plugs_in_a_third_recogniser(third_model):
    method, loss = third_model.demo()
    assert bool(torch.isfinite(loss)) and isinstance(method.har, third_model.PoseGRU)
    for part in (method.har, method.hpe):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_third_recogniser_runs_every_method(name, third_model, data):
    _, _, _, batch = data
    models = _models(("deepprior", "gru"), 0, attention=True)
    check_forward_backward(build(name, models, HALF, method_config(name, attention=True, p_eq=0.5)), batch, True)
    if name == "feedback":  # stepped: the step API and the hidden state of the interface
        check_feedback_fed_w_eq_is_the_conditioned_hpe(_models(("deepprior", "gru"), 2, True), batch, "both", HALF)

