"""The training loop: determinism, resume after interruption, atomic and safe checkpoints, selection."""
from __future__ import annotations

import pickle
import re

import pytest
import torch
from torch import nn

from handfuse.errors import ConfigError
from handfuse.train import BEST, CHECKPOINT, TrainConfig, epoch_generator, fit, load_checkpoint, save_checkpoint


class Toy(nn.Module):
    """A small regressor with dropout, so that the global RNG matters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


class ToyTask:
    """y = x . w + noise; validation metric = MSE.  Counts evaluations and can crash on demand."""

    metric = "mse"
    higher_is_better = False

    def __init__(self, crash_at: tuple[int, int] | None = None, drift: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = {s: torch.randn(n, 4, generator=g) for s, n in (("train", 256), ("val", 64), ("test", 64))}
        w = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.y = {s: x @ w + 0.1 * torch.randn(len(x), generator=g) for s, x in self.x.items()}
        self.crash_at, self.drift, self.evals = crash_at, drift, {"val": 0, "test": 0}

    def batches(self, split, epoch, cfg):
        order = torch.randperm(len(self.x[split]), generator=epoch_generator(cfg.seed, epoch))
        for b, i in enumerate(range(0, len(order), cfg.batch_size)):
            if self.crash_at == (epoch, b):
                raise KeyboardInterrupt("simulated kill")
            idx = order[i:i + cfg.batch_size]
            yield {"x": self.x[split][idx], "y": self.y[split][idx]}

    def loss(self, model, batch):
        return nn.functional.mse_loss(model(batch["x"])[:, 0], batch["y"])

    def evaluate(self, model, split, cfg):
        self.evals[split] += 1
        model.eval()
        with torch.inference_mode():
            mse = nn.functional.mse_loss(model(self.x[split])[:, 0], self.y[split]).item()
        if self.drift and split == "val":  # validation gets worse after the second evaluation
            mse += 10.0 * max(0, self.evals["val"] - 2)
        return {"mse": mse}


CFG = TrainConfig(epochs=6, batch_size=32, lr=1e-2, patience=3, seed=3)


def _run(tmp=None, cfg=CFG, task=None):
    torch.manual_seed(123)  # the same initial weights
    model = Toy()
    return model, fit(model, task or ToyTask(), cfg, tmp, config={"model": "toy"}, progress=False)


def test_same_seed_same_metrics_and_another_seed_differs():
    _, a = _run()
    _, b = _run()
    _, c = _run(cfg=TrainConfig(**{**CFG.__dict__, "seed": 4}))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert a.test == b.test
    assert a.test != c.test


def test_learns_and_evaluates_test_once():
    task = ToyTask()
    _, r = _run(task=task)
    assert r.history[-1]["train_loss"] < 0.5 * r.history[0]["train_loss"]
    assert task.evals["test"] == 1
    assert r.test["mse"] < 0.2 * task.y["test"].var().item()  # far better than predicting the mean


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_a_kill_mid_epoch_lands_on_the_same_result(tmp_path, schedule):
    cfg = TrainConfig(**{**CFG.__dict__, "schedule": schedule})
    _, straight = _run(tmp_path / "a", cfg=cfg)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", cfg=cfg, task=ToyTask(crash_at=(3, 2)))
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["epoch"] == 2  # the last complete epoch
    assert not (tmp_path / "b" / BEST).exists()  # nothing looks finished
    model, resumed = _run(tmp_path / "b", cfg=cfg)
    assert resumed.test == straight.test
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_cosine_schedule_decays_each_epoch_and_changes_training():
    cfg = TrainConfig(**{**CFG.__dict__, "schedule": "cosine"})
    _, cosine = _run(cfg=cfg)
    _, constant = _run()
    lrs = [h["lr"] for h in cosine.history]
    assert lrs[0] == CFG.lr and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))  # strictly down, never 0 while training
    assert abs(lrs[len(lrs) // 2] - CFG.lr / 2) < 1e-12  # half-way through, half the rate
    assert {h["lr"] for h in constant.history} == {CFG.lr}
    assert cosine.history[1]["train_loss"] != constant.history[1]["train_loss"]  # the rate reached the optimiser
    with pytest.raises(ConfigError, match="train.schedule"):
        TrainConfig(schedule="step")


def test_a_finished_run_is_loaded_not_retrained(tmp_path):
    _, first = _run(tmp_path)
    task = ToyTask()
    _, again = _run(tmp_path, task=task)
    assert again.test == first.test and task.evals["test"] == 0


def test_resume_refuses_a_different_configuration(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, task=ToyTask(crash_at=(2, 0)))
    with pytest.raises(ValueError, match="another configuration"):
        _run(tmp_path, cfg=TrainConfig(**{**CFG.__dict__, "lr": 5e-3}))


def test_early_stopping_selects_the_best_epoch():
    _, r = _run(cfg=TrainConfig(**{**CFG.__dict__, "epochs": 20}), task=ToyTask(drift=True))
    assert r.best_epoch == 1  # validation got worse from the third evaluation on
    assert len(r.history) == 1 + 1 + CFG.patience


def test_selected_validation_scores_are_the_selected_weights_own(tmp_path):
    """The validation scores of the selected epoch are reused, not computed again; after a resume that
    selected an epoch from before the kill, they are computed again.  Both equal a fresh evaluation."""
    task = ToyTask()
    model, r = _run(task=task)
    assert task.evals["val"] == len(r.history)  # one per epoch, none after
    assert r.val == ToyTask().evaluate(model, "val", CFG)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 20})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, cfg=cfg, task=ToyTask(drift=True, crash_at=(3, 0)))  # the best epoch (1) is checkpointed
    resumed_task = ToyTask(drift=True)
    resumed_task.evals["val"] = 3  # validation stays worse: no later epoch is selected
    model, resumed = _run(tmp_path, cfg=cfg, task=resumed_task)
    assert resumed.best_epoch == 1 and len(resumed.history) == 2 + CFG.patience
    assert resumed_task.evals["val"] == 3 + (len(resumed.history) - 3) + 1  # the resumed epochs, then the selected weights
    check = ToyTask(drift=True)
    check.evals["val"] = resumed_task.evals["val"] - 1  # the same drift as that last evaluation
    assert resumed.val == check.evaluate(model, "val", cfg)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})

    def torn(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: could not write the checkpoint \(OSError: disk full\); [0-9.]+ GiB free"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))  # the old one is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # and the torn temporary file is gone


def test_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    """torch's own writer reports a full disk as a RuntimeError ("unexpected pos ..."): it becomes one
    OSError naming the checkpoint, and no temporary file is left behind."""
    def full(obj, f):
        f.write(b"\x80\x02")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "run" / "best.pt"
    with pytest.raises(OSError, match=rf"{re.escape(str(path))}: could not write the checkpoint \(RuntimeError: .*unexpected pos"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert list((tmp_path / "run").iterdir()) == []


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match=str(path.name)):
        load_checkpoint(path)
    torch.save({"model": Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(ValueError, match="evil2.pt"):
        load_checkpoint(tmp_path / "evil2.pt")


def test_cuda_without_cuda_is_a_clear_error():
    """On a machine without CUDA, which a child process with its GPUs hidden is (on any machine)."""
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom handfuse.errors import ConfigError\nfrom handfuse.train import TrainConfig, fit\n"
            "assert not torch.cuda.is_available()\n"
            "try:\n    fit(torch.nn.Linear(1, 1), None, TrainConfig(device='cuda'))\n"
            "except ConfigError as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ConfigError") and "train.device" in done.stdout, done.stdout


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"val_fraction": 1.0}, {"device": "tpu"}])
def test_impossible_training_parameters_are_refused(bad):
    with pytest.raises(ConfigError, match="train." + next(iter(bad))):
        TrainConfig(**bad)


def test_compiled_training_matches_eager_closely():
    _, eager = _run(cfg=TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    _, compiled = _run(cfg=TrainConfig(**{**CFG.__dict__, "epochs": 2, "compile": True}))
    # inductor draws its own dropout masks, so the two runs agree closely but not bit for bit
    assert compiled.test["mse"] == pytest.approx(eager.test["mse"], rel=2e-2)
    assert compiled.history[-1]["train_loss"] < compiled.history[0]["train_loss"]


def test_fused_adam_gives_the_single_tensor_updates():
    """The training loop's fused Adam against torch's default (single-tensor) Adam: the same
    trajectory, up to float rounding, on a conv net with weight decay, over several steps."""
    from handfuse.models.hpe import HPE, HPEConfig
    from handfuse.train import adam

    def trained(make_opt):
        torch.manual_seed(0)
        net = HPE(HPEConfig(crop=32, stem_channels=16, widths=(16, 32, 32, 32), blocks=(1, 1, 1, 1), fc=64))
        net.init_pca(torch.randn(64, 21, 3) * 0.3)
        opt = make_opt([p for p in net.parameters() if p.requires_grad])
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1, torch.randn(8, 21, 3, generator=g) * 0.3
            loss = net.loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return opt, dict(net.named_parameters())

    fused_opt, fused = trained(lambda ps: adam(ps, lr=1e-3, weight_decay=1e-4))
    plain_opt, plain = trained(lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4, foreach=False))
    assert fused_opt.defaults["fused"] and not plain_opt.defaults["fused"]
    start = dict(trained(lambda ps: torch.optim.SGD(ps, lr=0.0))[1])  # the initial weights
    moved = [n for n in fused if not torch.equal(fused[n], start[n])]
    assert len(moved) > 10  # the steps really updated the net
    for name in fused:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("bad,match", [({"graphs": 1}, "True or False"), ({"graphs": True, "compile": True}, "compile")])
def test_graphs_option_is_checked(bad, match):
    with pytest.raises(ConfigError, match=f"train.graphs.*{match}"):
        TrainConfig(**bad)


def test_graphs_on_cpu_change_nothing(tmp_path):
    """``graphs`` is CUDA-only: on CPU a run with it is the run without it, metric for metric, in the
    same run folder name (the option is recorded only where it takes effect)."""
    from dataclasses import replace

    from handfuse.train import recorded, run_digest

    _, plain = _run(tmp_path / "plain")
    _, graphed = _run(tmp_path / "graphed", cfg=replace(CFG, graphs=True))
    assert [h["train_loss"] for h in graphed.history] == [h["train_loss"] for h in plain.history]
    assert graphed.test == plain.test and graphed.config == plain.config
    assert "graphs" not in recorded(CFG) and recorded(replace(CFG, graphs=True)) == recorded(CFG)
    assert recorded(replace(CFG, graphs=True, device="cuda"))["graphs"] is True
    assert run_digest({"train": recorded(replace(CFG, graphs=True))}) == run_digest({"train": recorded(CFG)})


def test_hpe_task_on_cpu_ignores_graphs(smoke_fusion_data):
    """The HPE task's batches and evaluation with ``graphs`` on CPU: the host path, the same numbers."""
    from dataclasses import replace

    from handfuse.config import get_preset
    from handfuse.models.hpe import HPE
    from handfuse.tasks import HPETask

    fpha, cache, _, _ = smoke_fusion_data
    task = HPETask(cache, {"train": fpha.train, "test": fpha.test}, get_preset("smoke").augment)
    cfg = replace(get_preset("smoke").train_hpe, max_batches=2)
    for a, b in zip(task.batches("train", 0, cfg), task.batches("train", 0, replace(cfg, graphs=True))):
        assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["joints"], b["joints"])
    assert task.crops_on("cpu") is None
    torch.manual_seed(0)
    model = HPE(get_preset("smoke").hpe)
    model.init_pca(torch.randn(64, 21, 3) * 0.3)
    assert task.evaluate(model, "test", cfg) == task.evaluate(model, "test", replace(cfg, graphs=True))
