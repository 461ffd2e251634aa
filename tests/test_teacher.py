"""Feeding the true action (issue 22): the oracle evaluation feed, scheduled sampling (the epoch
reaches the coin as its schedule says) and a late action."""
from __future__ import annotations

import pytest
import torch

from handfuse.config import get_preset
from handfuse.errors import ConfigError
from handfuse.methods import build, method_config
from handfuse.methods.common import P_EQ_SCHEDULES, see_labels
from handfuse.skeleton import NUM_ACTIONS

from conftest import random_fusion_models

HALF = get_preset("smoke").preprocess.cube_mm / 2


@pytest.fixture
def batch(smoke_fusion_data):
    return smoke_fusion_data[3]


def _run(model, batch, labels=None):
    see_labels(model, batch["label"] if labels is None else labels)
    return model(batch["depth"], batch["centre"], batch["mask"])


def _one_hot_fed_pose(model, batch, labels):
    """Every valid frame's pose from the conditioned HPE fed the one-hot of ``labels``, frame by frame."""
    mask = batch["mask"]
    action = torch.nn.functional.one_hot(labels, NUM_ACTIONS).float()[:, None].expand(*mask.shape, NUM_ACTIONS)
    hpe = model.hpe if hasattr(model, "hpe") else model.hpe2
    return model.to_mm(hpe(batch["depth"][mask], action[mask])["joints"], batch["centre"][mask])


@pytest.mark.parametrize("film", ["fc", "both"])
def test_the_oracle_feed_gives_every_frame_the_conditioned_hpe_fed_the_true_action(film, batch):
    model = build("feedback", random_fusion_models(11, False, film), HALF,
                  method_config("feedback", film=film, eval_feed="true")).eval()
    with torch.no_grad():
        out = _run(model, batch)
        expected = _one_hot_fed_pose(model, batch, batch["label"])
        torch.testing.assert_close(out["joints_mm"][batch["mask"]], expected)
        assert bool(out["fed_true"][batch["mask"]].all()) and not bool(out["fed_w_eq"].any())  # frame 0 too
        other = _run(model, batch, (batch["label"] + 1) % NUM_ACTIONS)  # another action: other poses (random FiLM)
    assert (other["joints_mm"] - out["joints_mm"])[batch["mask"]].abs().max() > 1e-3


def test_the_ensembles_oracle_feeds_its_second_hpe_the_true_action(batch):
    model = build("ensemble", random_fusion_models(12, False), HALF,
                  method_config("ensemble", eval_feed="true")).eval()
    with torch.no_grad():
        out = _run(model, batch)
        expected = _one_hot_fed_pose(model, batch, batch["label"])
    torch.testing.assert_close(out["second"]["joints_mm"][batch["mask"]], expected)


def test_a_feed_of_the_truth_without_labels_is_refused_by_name(batch):
    model = build("feedback", random_fusion_models(13, False), HALF, method_config("feedback", eval_feed="true")).eval()
    with pytest.raises(ConfigError, match="fusion.eval_feed.*see_labels"):
        model(batch["depth"], batch["centre"], batch["mask"])


@pytest.mark.parametrize("schedule", ["linear_decay", "inverse_sigmoid"])
def test_the_epoch_reaches_the_scheduled_sampling_coin_as_specified(schedule, batch):
    """Fine-tuning at epoch e of E feeds the truth at the rate the schedule gives at e (never frame 0),
    and the p_eq coin decides only among the other frames."""
    model = build("feedback", random_fusion_models(14, False), HALF,
                  method_config("feedback", p_true=0.9, p_true_schedule=schedule, p_eq=0.5, coin="item")).train()
    mask = batch["mask"]
    epochs, rates = 5, []
    torch.manual_seed(0)
    with torch.no_grad():
        for epoch in range(epochs):
            model.at_epoch(epoch, epochs)
            fed_true, fed_w_eq = [], []
            for _ in range(12):
                out = _run(model, batch)
                assert not bool(out["fed_true"][:, 0].any()) and not bool((out["fed_true"] & out["fed_w_eq"]).any())
                fed_true.append(out["fed_true"][:, 1:][mask[:, 1:]].float().mean())
                rest = mask[:, 1:] & ~out["fed_true"][:, 1:]
                fed_w_eq.append(out["fed_w_eq"][:, 1:][rest].float().mean() if bool(rest.any()) else torch.tensor(0.5))
            rates.append(float(torch.stack(fed_true).mean()))
            assert abs(rates[-1] - P_EQ_SCHEDULES[schedule](0.9, epoch, epochs)) < 0.08, (epoch, rates)
            assert abs(float(torch.stack(fed_w_eq).mean()) - 0.5) < 0.15
    assert rates[0] > 0.8 and rates[-1] < 0.1 and rates == sorted(rates, reverse=True)


def test_scheduled_sampling_fine_tunes_through_fit(smoke_fusion_data, tmp_path):
    """The labels reach the method inside fit (FusionTask), so a truth feed trains and scores."""
    from handfuse.finetune import finetune

    fpha, cache, _, _ = smoke_fusion_data
    cfg = method_config("feedback", p_true=1.0, p_true_schedule="linear_decay", film="fc")
    _, result = finetune("feedback", random_fusion_models(15, False, "fc"), fpha, get_preset("smoke"), cfg, 0,
                         cache=cache, root=tmp_path, progress=False)
    assert result.history and all(h["train_loss"] == h["train_loss"] for h in result.history)


def test_a_late_action_feeds_w_eq_before_frame_k_in_training_and_evaluation(batch):
    k = 2
    for training in (True, False):
        model = build("feedback", random_fusion_models(16, False), HALF,
                      method_config("feedback", feed_after=k, p_eq=0.0, p_true=0.5, eval_feed="true")).train(training)
        with torch.no_grad():
            out = _run(model, batch)
        mask = batch["mask"]
        assert bool(out["fed_w_eq"][:, :k][mask[:, :k]].all()) and not bool(out["fed_true"][:, :k].any())
        assert bool((out["fed_w_eq"] | out["fed_true"])[:, k:][mask[:, k:]].all()) != training  # eval: truth after k


@pytest.mark.parametrize("options, parameter", [({"p_true": 1.5}, "fusion.p_true"),
                                                ({"p_true_schedule": "cosine"}, "fusion.p_true_schedule"),
                                                ({"feed_after": -1}, "fusion.feed_after"),
                                                ({"eval_feed": "label"}, "fusion.eval_feed")])
def test_bad_truth_options_are_refused_by_name(options, parameter):
    with pytest.raises(ConfigError, match=parameter):
        method_config("feedback", **options)


# ----------------------------------------------------------------------------- what pre-training feeds


def test_each_pretraining_feed_gives_what_it_says(smoke_fusion_data):
    from handfuse.tasks import HPETask

    fpha, cache, _, _ = smoke_fusion_data
    labels, like = torch.tensor([0, 5, 44, 7] * 8), torch.zeros(1)
    task = lambda feed: HPETask(cache, {"train": fpha.train[:2]}, feed=feed)  # noqa: E731
    true = torch.nn.functional.one_hot(labels, NUM_ACTIONS).float()
    assert task("w_eq").action(labels, like, training=True) is None
    torch.testing.assert_close(task("true").action(labels, like, training=True), true)
    torch.testing.assert_close(task("true").action(labels, like, training=False), true)  # the oracle: at test too
    torch.testing.assert_close(task("smooth").action(labels, like, training=True), 0.5 * true + 0.5 / NUM_ACTIONS)
    torch.manual_seed(0)
    mixed = task("mix").action(labels, like, training=True)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(len(labels)))
    kinds = [("true" if torch.equal(m, t) else "w_eq" if torch.allclose(m, torch.full_like(m, 1 / NUM_ACTIONS))
              else "noisy") for m, t in zip(mixed, true)]
    assert set(kinds) == {"true", "w_eq", "noisy"}
    assert all(int(m.argmax()) == int(l) for m, l, k in zip(mixed, labels, kinds) if k == "noisy")  # still the truth, moved
    for feed in ("w_eq", "mix", "smooth"):
        assert task(feed).action(labels, like, training=False) is None  # evaluated on w_eq


def test_the_oracle_hpe_knows_the_action_and_the_w_eq_hpe_cannot_use_it(smoke_fusion_data, tmp_path):
    """Pre-trained on w_eq alone, a zero-initialised FiLM only ever moves along w_eq: fed the true
    action at test it gives the same poses (the headroom is out of its reach).  Pre-trained on the
    truth, it is scored fed the truth."""
    from handfuse.standalone import pretrain_hpe

    fpha, cache, _, _ = smoke_fusion_data
    P = get_preset("smoke")
    _, plain = pretrain_hpe(fpha, P, "fc", 0, cache=cache, root=tmp_path, progress=False)
    _, oracle = pretrain_hpe(fpha, P, "fc", 0, cache=cache, root=tmp_path, progress=False, feed="true")
    assert plain.run_dir != oracle.run_dir and "hpe-fc-true" in oracle.run_dir
    assert abs(plain.test["error_mm_true_action"] - plain.test["error_mm"]) < 1e-3 * plain.test["error_mm"]
    assert oracle.test["error_mm"] == oracle.test["error_mm_true_action"]
    assert oracle.config["feed"] == "true" and "feed" not in plain.config


@pytest.mark.parametrize("kwargs, parameter", [({"film": "none", "feed": "true"}, "feed"),
                                               ({"film": "fc", "feed": "labels"}, "feed")])
def test_a_pretraining_feed_is_checked_before_any_work(smoke_fusion_data, kwargs, parameter):
    from handfuse.standalone import pretrain_hpe

    fpha, _, _, _ = smoke_fusion_data
    with pytest.raises(ConfigError, match=f"parameter '{parameter}'"):
        pretrain_hpe(fpha, get_preset("smoke"), cache=None, progress=False, **kwargs)


def test_a_method_starts_from_the_hpe_pretrained_on_its_feed(smoke_fusion_data, tmp_path, monkeypatch):
    from handfuse import finetune as ft

    made = []
    monkeypatch.setattr(ft, "pretrain", lambda fpha, P, kind, kwargs, *a: made.append((kind, kwargs)) or
                        (object(), type("R", (), {"feed": kwargs.get("feed", "w_eq")})()))
    models = ft.pretrained(smoke_fusion_data[0], get_preset("smoke"), 0, film="fc", hpe_feed="mix")
    assert ("hpe", {"film": "fc", "seed": 0, "model": "deepprior", "feed": "mix"}) in made
    assert models.results["hpe_film"].feed == "mix" and models.results["hpe"].feed == "w_eq"
    with pytest.raises(ConfigError, match="fusion.hpe_feed"):
        method_config("feedback", hpe_feed="labels")
