"""The fusion methods, over the registry: shapes, gradients, the identities the study relies on,
deterministic evaluation and refused parameters.

The models are random (no training needed) but their FiLM layers are given random
weights, so that the fed action really changes the pose: a test of "feedback feeds
the prediction" could not pass by accident with identity FiLMs.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_fusion_models
from fusion_checks import (check_deterministic_evaluation, check_ensemble_first_pass,
                           check_feedback_fed_w_eq_is_the_conditioned_hpe, check_feedback_feeds_the_previous_action,
                           check_forward_backward, check_untrained_baseline_is_the_hpe)
from handfuse.config import get_preset
from handfuse.datasets import SequenceDataset
from handfuse.errors import ConfigError
from handfuse import finetune as fusion_module
from handfuse.finetune import FusionTask, Pretrained, finetune
from handfuse.methods import options
from handfuse.records import PretrainedScores, RunRecord, CentreScores, aggregate
from handfuse.runs import ScoreStore, fingerprint, run_folder
from handfuse.methods import METHODS, build, evaluate_sequences, method_config
from handfuse.methods.noise import perturb
from handfuse.models.film import FiLM
from handfuse.train import FitResult

PRESET = get_preset("smoke")
HALF = PRESET.preprocess.cube_mm / 2


def _models(seed: int, attention: bool, film: str = "both") -> Pretrained:
    return random_fusion_models(seed, attention, film)


@pytest.fixture
def data(smoke_fusion_data):
    return smoke_fusion_data  # (fpha, cache, sequences, batch): see conftest


def _forward(model, batch):
    return model(batch["depth"], batch["centre"], batch["mask"])


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_forward_backward_over_the_registry(name, attention, data):
    _, _, _, batch = data
    model = build(name, _models(0, attention), HALF, method_config(name, attention=attention, p_eq=0.5))
    check_forward_backward(model, batch, attention)
    assert model.har.classifier.weight.grad.abs().sum() > 0


def test_untrained_baseline_reproduces_the_standalone_hpe_error(data):
    fpha, cache, seqs, _ = data
    check_untrained_baseline_is_the_hpe(_models(1, False), cache, seqs, fpha.test[:6], HALF)


@pytest.mark.parametrize("film", ["both", "fc", "blocks"])
def test_feedback_with_p_eq_1_is_the_w_eq_conditioned_hpe(film, data):
    _, _, _, batch = data
    check_feedback_fed_w_eq_is_the_conditioned_hpe(_models(2, True, film), batch, film, HALF)


@pytest.mark.parametrize("film", ["both", "fc", "blocks"])
def test_feedback_feeds_frame_t_the_action_after_frame_t_minus_1(film, data):
    """Every frame's pose, recomputed one at a time from the previous step's logits (the naive
    unroll), equals what the batched implementation returned: the fast paths change no number."""
    _, _, _, batch = data
    check_feedback_feeds_the_previous_action(_models(3, False, film), batch, film, HALF)


def test_ensemble_with_eta_zeta_0_is_its_first_pass(data):
    _, _, _, batch = data
    check_ensemble_first_pass(_models(4, True), batch, HALF, attention=True)


def test_ensemble_mixes_the_two_passes(data):
    _, _, _, batch = data
    model = build("ensemble", _models(5, False), HALF, method_config("ensemble", eta=0.3, zeta=0.7)).eval()
    with torch.no_grad():
        out = _forward(model, batch)
    a, b = out["first"], out["second"]
    torch.testing.assert_close(out["joints_mm"], 0.3 * b["joints_mm"] + 0.7 * a["joints_mm"])
    expected = 0.7 * torch.log_softmax(b["logits"], -1) + 0.3 * torch.log_softmax(a["logits"], -1)
    torch.testing.assert_close(out["logits"], expected)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_evaluation_is_deterministic_and_never_draws_a_coin(name, data):
    _, _, seqs, _ = data
    check_deterministic_evaluation(build(name, _models(6, False), HALF, method_config(name, p_eq=0.5)), seqs)


def test_training_coin_feeds_predictions_at_rate_1_minus_p_eq(data):
    _, _, _, batch = data
    model = build("feedback", _models(7, False), HALF, method_config("feedback", p_eq=0.25, coin="item")).train()
    torch.manual_seed(0)
    fed = []
    with torch.no_grad():
        for _ in range(20):
            out = _forward(model, batch)
            fed.append(out["fed_w_eq"][:, 1:][batch["mask"][:, 1:]].float().mean())
    assert 0.15 < float(torch.stack(fed).mean()) < 0.35


def test_frozen_norm_keeps_running_statistics(data):
    _, _, _, batch = data
    model = build("baseline", _models(8, False), HALF).train()
    before = model.hpe.stem[1].running_mean.clone()
    _forward(model, batch)
    assert torch.equal(before, model.hpe.stem[1].running_mean)
    free = build("baseline", _models(8, False), HALF, method_config("baseline", freeze_norm=False)).train()
    _forward(free, batch)
    assert not torch.equal(before, free.hpe.stem[1].running_mean)


@pytest.mark.parametrize("kind", ["smooth", "dirichlet", "temperature"])
def test_noise_stays_on_the_simplex_and_keeps_gradients(kind):
    torch.manual_seed(0)
    logits = torch.randn(64, 45, requires_grad=True)
    p = torch.softmax(logits, -1)
    noisy = perturb(p, kind, 0.5)
    assert noisy.shape == p.shape and bool((noisy >= 0).all())
    torch.testing.assert_close(noisy.sum(-1), torch.ones(64))
    assert float((noisy - p).detach().abs().max()) > 1e-3
    noisy.pow(2).sum().backward()
    assert float(logits.grad.abs().sum()) > 0
    assert perturb(p, "none", 0.5) is p


@pytest.mark.parametrize("options, parameter", [
    ({"p_eq": 1.5}, "fusion.p_eq"), ({"p_eq": -0.1}, "fusion.p_eq"), ({"eta": 2}, "fusion.eta"),
    ({"zeta": -1}, "fusion.zeta"), ({"noise": "pink"}, "fusion.noise"), ({"noise_level": 0}, "fusion.noise_level"),
    ({"eval_feed": "coin"}, "fusion.eval_feed"), ({"coin": "batch"}, "fusion.coin"), ({"film": "none"}, "fusion.film"),
    ({"w_nll": 0, "w_pose": 0}, "fusion.w_nll"), ({"attention": 1}, "fusion.attention"),
])
def test_bad_options_are_refused_by_name(options, parameter):
    with pytest.raises(ConfigError, match=parameter):
        method_config("feedback", **options)


def test_unknown_methods_and_unconditioned_feedback_are_refused():
    with pytest.raises(ConfigError, match="'method'.*one of"):
        method_config("boosting")
    models = _models(9, False)
    with pytest.raises(ConfigError, match="hpe.film"):
        build("feedback", Pretrained(models.hpe, models.hpe, models.har, {}), HALF)


def test_finetuning_runs_through_fit_and_is_deterministic(data, tmp_path):
    fpha, cache, _, _ = data
    cfg = method_config("feedback", p_eq=0.5)
    results = []
    for folder in ("a", "b"):
        models = _models(10, False)
        models.results = {"hpe": FitResult(), "hpe_film": FitResult(), "har": FitResult()}
        model, result = finetune("feedback", models, fpha, PRESET, cfg, 0, cache=cache, root=tmp_path / folder,
                                 progress=False)
        results.append(result)
        assert (Path(result.run_dir) / "best.pt").is_file() and Path(result.run_dir).is_relative_to(tmp_path / folder)
    assert results[0].test == results[1].test and np.isfinite(results[0].test["loss"])
    assert [h["train_loss"] for h in results[0].history] == [h["train_loss"] for h in results[1].history]
    assert Path(results[0].run_dir).name == Path(results[1].run_dir).name  # the name is the configuration's
    train = PRESET.train_fuse
    config = {"method": "feedback", "fusion": asdict(cfg)}
    def run_name(config, train, seed):
        return run_folder(PRESET, "fuse-feedback", config, train, seed, tmp_path).name

    names = {run_name(config, train, 0), run_name({**config, "fusion": asdict(replace(cfg, p_eq=0.6))}, train, 0),
             run_name(config, replace(train, lr=2 * train.lr), 0), run_name(config, train, 1)}
    assert len(names) == 4  # options, training settings and seed each name their own folder


def test_the_test_split_scored_by_finetuning_is_reused_exactly_and_only_then(data, tmp_path, monkeypatch):
    fpha, cache, _, _ = data
    cfg = method_config("feedback", p_eq=0.5)
    models = _models(11, False)
    models.results = {"hpe": FitResult(), "hpe_film": FitResult(), "har": FitResult()}
    scored = {}
    model, result = finetune("feedback", models, fpha, PRESET, cfg, 0, cache=cache, root=tmp_path, progress=False,
                             scored=scored)
    assert len(scored) == 1
    gt = SequenceDataset(cache, fpha.test)  # the notebooks' test set: the same sequences, another object
    other = SequenceDataset(cache, fpha.test[:-1])
    calls = []
    monkeypatch.setattr(fusion_module, "evaluate_sequences",
                        lambda m, d, batch_size: calls.append(d) or evaluate_sequences(m, d, batch_size))
    scores = fusion_module.evaluate(model, {"gt": gt, "fewer": other}, scored)
    assert calls == [other]  # the gt split was not scored again; the one holding other sequences was
    fresh = evaluate_sequences(model, gt, fusion_module.EVAL_BATCH)
    assert scores["gt"]["error_mm"] == fresh["error_mm"] == result.test["error_mm"]
    assert np.array_equal(scores["gt"]["logits"], fresh["logits"])
    # a finished run loaded from disk scores nothing while fitting: its caller must score it
    again = {}
    loaded_models = _models(11, False)
    loaded_models.results = models.results
    finetune("feedback", loaded_models, fpha, PRESET, cfg, 0, cache=cache, root=tmp_path, progress=False, scored=again)
    assert again == {}


def test_stored_scores_are_the_evaluation_and_follow_the_weights(data, tmp_path, monkeypatch):
    """A stored score is loaded only for the same weights, method options and test frames, and it
    equals the evaluation it replaces, per-sequence details included."""
    fpha, cache, _, _ = data
    model = build("feedback", _models(12, True), HALF, method_config("feedback", p_eq=0.5, attention=True))
    calls = []
    monkeypatch.setattr(fusion_module, "evaluate_sequences",
                        lambda m, d, batch_size: calls.append(d) or evaluate_sequences(m, d, batch_size))
    store = ScoreStore(tmp_path, "weights A")
    first = fusion_module.evaluate(model, {"gt": SequenceDataset(cache, fpha.test)}, store=store)["gt"]
    again = fusion_module.evaluate(model, {"gt": SequenceDataset(cache, fpha.test)},
                                   store=ScoreStore(tmp_path, "weights A"))["gt"]
    assert len(calls) == 1
    assert {k: again[k] for k in ("error_mm", "accuracy", "loss")} == {k: first[k] for k in ("error_mm", "accuracy", "loss")}
    assert np.array_equal(again["logits"], first["logits"]) and np.array_equal(again["labels"], first["labels"])
    assert all(np.array_equal(a, b) for a, b in zip(again["frame_error_mm"], first["frame_error_mm"], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(again["attention"], first["attention"], strict=True))
    # other weights, other options of the same weights, other frames: each evaluated, each stored on its own
    fusion_module.evaluate(model, {"gt": SequenceDataset(cache, fpha.test)}, store=ScoreStore(tmp_path, "weights B"))
    with options(model, eval_feed="w_eq"):
        fusion_module.evaluate(model, {"gt": SequenceDataset(cache, fpha.test)}, store=store)
    fusion_module.evaluate(model, {"gt": SequenceDataset(cache, fpha.test[:-1])}, store=store)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.pt"))) == 4


def test_weights_fingerprint_changes_when_a_run_is_trained_again(tmp_path):
    (tmp_path / "result.json").write_text('{"seconds": 1.0}')
    run = FitResult(run_dir=str(tmp_path))
    before = fingerprint(run)
    assert fingerprint(FitResult(run_dir=str(tmp_path))) == before
    (tmp_path / "result.json").write_text('{"seconds": 1.5}')  # what a second training run writes
    assert fingerprint(run) != before
    assert fingerprint(FitResult(test={"error_mm": 1.0})) != fingerprint(FitResult(test={"error_mm": 2.0}))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_deterministic_across_runs_and_resume_and_seeds(data, tmp_path, monkeypatch, name):
    fpha, cache, _, _ = data
    cfg = method_config(name, p_eq=0.5) if name == "feedback" else method_config(name)

    def tune(folder: str, seed: int = 0):
        models = _models(10 + seed, False)
        models.results = {"hpe": FitResult(), "hpe_film": FitResult(), "har": FitResult()}
        return finetune(name, models, fpha, PRESET, cfg, seed, cache=cache, root=tmp_path / folder, progress=False)[1]

    straight, again = tune("a"), tune("b")
    batches = FusionTask.batches

    def killed_in_epoch_1(self, split, epoch, train_cfg):
        if split == "train" and epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return batches(self, split, epoch, train_cfg)

    monkeypatch.setattr(FusionTask, "batches", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        tune("c")
    monkeypatch.setattr(FusionTask, "batches", batches)
    resumed, other = tune("c"), tune("d", seed=1)
    for run in (again, resumed):
        assert run.test == straight.test
        assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in straight.history]
    assert other.test != straight.test


def test_fusion_task_batches_cover_the_split(data):
    fpha, cache, _, _ = data
    task = FusionTask({"train": SequenceDataset(cache, fpha.train)})
    cfg = replace(PRESET.train_fuse, max_batches=None, batch_size=3)
    seen = torch.cat([b["seq"] for b in task.batches("train", 0, cfg)])
    assert sorted(seen.tolist()) == sorted(SequenceDataset(cache, fpha.train).seq_indices.tolist())


def test_fusion_task_jitters_the_training_centres_only_and_alike_per_seed(data):
    """With ``jitter_mm`` the training batches' centres move (the world joints stay), seeded by the run's
    seed and epoch; validation batches are left as they are."""
    fpha, cache, _, _ = data
    ds = SequenceDataset(cache, fpha.train)
    cfg = replace(PRESET.train_fuse, max_batches=2, batch_size=3)
    plain = list(FusionTask({"train": ds, "val": ds}).batches("train", 0, cfg))
    task = FusionTask({"train": ds, "val": ds}, jitter_mm=10.0)
    jittered, again = list(task.batches("train", 0, cfg)), list(task.batches("train", 0, cfg))
    other_epoch = list(task.batches("train", 1, cfg))
    for p, j, a in zip(plain, jittered, again):
        assert torch.equal(p["seq"], j["seq"])
        shift = (j["centre"] - p["centre"])[p["mask"]]  # (N, 3) mm
        assert 5.0 < shift.std().item() < 15.0
        assert torch.equal(j["centre"], a["centre"]) and torch.equal(j["depth"], a["depth"])
        world = j["joints"] * ds.half_cube + j["centre"][:, :, None]
        assert torch.allclose(world[p["mask"]], p["joints_mm"][p["mask"]], atol=1e-2)
    plain_1 = list(FusionTask({"train": ds}).batches("train", 1, cfg))
    assert not torch.allclose(other_epoch[0]["centre"][0, 0] - plain_1[0]["centre"][0, 0],
                              jittered[0]["centre"][0, 0] - plain[0]["centre"][0, 0])  # a new epoch, new draws
    for p, v in zip(plain, task.batches("val", 0, cfg)):
        assert torch.equal(p["centre"], v["centre"]) and torch.equal(p["depth"], v["depth"])


def test_aggregate_gives_means_and_intervals():
    scores = PretrainedScores(1.0, 1.0, 0.5, 0.0, 0.0)
    records = [RunRecord("baseline", seed, True, "deepprior", "lstm", {}, CentreScores.of({"gt": {"error_mm": e, "accuracy": a}}),
                         scores) for seed, (e, a) in enumerate(((10.0, 0.5), (12.0, 0.7), (11.0, 0.6)))]
    agg = aggregate(records)["gt"]
    assert agg["error_mm"][0] == pytest.approx(11.0) and agg["accuracy"][0] == pytest.approx(60.0)
    assert agg["error_mm"][1] == pytest.approx(4.302652730 * 1.0 / np.sqrt(3))


def test_film_trained_on_w_eq_alone_ignores_the_action_until_given_a_response():
    """Zero-initialised FiLM layers that only ever saw w_eq answer every action distribution alike
    (identical weight columns); add_random_response changes that and keeps the w_eq output."""
    torch.manual_seed(0)
    film = FiLM(45, 8)
    opt = torch.optim.Adam(film.parameters(), lr=0.05)
    x, w_eq = torch.randn(16, 8), torch.full((16, 45), 1 / 45)
    for _ in range(20):  # train on w_eq only
        loss = (film(x, w_eq) - 2 * x - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    other = torch.softmax(torch.randn(16, 45) * 3, -1)
    with torch.no_grad():
        assert float((film(x, w_eq) - x).abs().max()) > 0.1, "the FiLM did not train"
        torch.testing.assert_close(film(x, other), film(x, w_eq))
        before = film(x, w_eq)
        film.add_random_response(1.0)
        torch.testing.assert_close(film(x, w_eq), before)
        assert float((film(x, other) - before).abs().max()) > 1e-2


def test_mix_grid_and_passes_agree_with_evaluating_each_mix(data):
    from handfuse.methods.ensemble import ensemble_passes, mix_grid

    _, _, seqs, _ = data
    model = build("ensemble", _models(11, False), HALF, method_config("ensemble", eta=0.5, zeta=0.5))
    grid = mix_grid(model, seqs, [0.0, 0.7])
    for i, eta in enumerate([0.0, 0.7]):
        for j, zeta in enumerate([0.0, 0.7]):
            with options(model, eta=eta, zeta=zeta):
                direct = evaluate_sequences(model, seqs, batch_size=4)
            assert grid["error_mm"][i, j] == pytest.approx(direct["error_mm"], rel=1e-5)
            assert grid["accuracy"][i, j] == pytest.approx(direct["accuracy"])
    assert model.cfg.eta == 0.5, "options() must restore the model's weights"
    passes = ensemble_passes(model, seqs)
    assert passes["first pass"]["error_mm"] == pytest.approx(grid["error_mm"][0, 0], rel=1e-6)
    assert passes["mixed"]["error_mm"] <= max(passes["first pass"]["error_mm"], passes["second pass"]["error_mm"])


def test_depth_centred_test_set_differs_from_the_ground_truth_one(data):
    from handfuse.finetune import test_sets

    fpha, cache, _, _ = data
    sets = test_sets(fpha, PRESET, cache, progress=False)
    gt, depth = sets["gt"][0], sets["depth"][0]
    assert gt["label"] == depth["label"] and torch.equal(gt["joints_mm"], depth["joints_mm"])
    assert float((gt["centre"] - depth["centre"]).norm(dim=-1).mean()) > 1.0
    assert len(sets["gt"]) == len(sets["depth"]) == len(fpha.test)


def test_unknown_options_and_bad_cli_values_are_refused_before_work(tmp_path):
    import subprocess
    import sys

    with pytest.raises(ConfigError, match="fusion.pq.*known keys"):
        method_config("feedback", pq=0.5)
    # cuda:99: a device no machine has, so refused on a machine with a GPU as well as on one without
    for args, name in ((["--set", "p_eq=2"], "fusion.p_eq"), (["--set", "eta"], "--set"), (["--method", "boost"], "method"),
                       (["--train", "epochs=0"], "train.epochs"), (["--device", "cuda:99"], "--device")):
        done = subprocess.run([sys.executable, "-m", "handfuse", "train", "fusion", "--preset", "smoke",
                               "--runs", str(tmp_path), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and name in done.stderr, (args, done.stderr[-500:])
    assert not any(tmp_path.iterdir()), "a refused command must not start any work"
