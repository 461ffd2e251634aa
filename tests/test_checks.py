"""The notebooks' checks (handfuse/checks.py) pass what learned and fail what did not.

The unit tests feed each check passing and failing numbers.  The others train the smoke preset's
models for real, through the functions the notebooks reach (pre-training, fine-tuning), once as
they are and once with every optimiser step made a no-op (or poisoned with NaN), and call the
checks the notebooks call: the real runs pass, the others fail.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from handfuse import checks, standalone, train
from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import FrameDataset
from handfuse.finetune import finetune, pretrained, resolved_config
from handfuse.fpha import FPHA
from handfuse.methods import BUILTIN
from handfuse.metrics import mean_joint_error
from handfuse.paths import ensure_synthetic
from handfuse.standalone import pretrain_har, pretrain_hpe, splits
from handfuse.tasks import HPETask

from conftest import copy_smoke_localiser


@pytest.fixture(scope="module")
def smoke():
    fpha, preset = FPHA(ensure_synthetic("smoke")), get_preset("smoke")
    return fpha, preset, get_cache(fpha, preset.preprocess, progress=False)


class NoOpAdam(torch.optim.Adam):
    """``handfuse.train.adam``'s optimiser, except that a step changes nothing; it counts its steps."""

    steps = 0

    def step(self, closure=None):
        NoOpAdam.steps += 1


class NaNAdam(torch.optim.Adam):
    """A step that writes NaN into every weight it updates: the loss is NaN from the next step on."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.fill_(math.nan)


def _noop(params, lr=1e-3, weight_decay=0.0, capturable=False):
    return NoOpAdam(params, lr=lr, weight_decay=weight_decay)


def _nan(params, lr=1e-3, weight_decay=0.0, capturable=False):
    return NaNAdam(params, lr=lr, weight_decay=weight_decay)


# ----------------------------------------------------------------------------- the checks alone

def test_hpe_learned_needs_a_clear_margin_below_both_references():
    checks.hpe_learned(30.0, 45.0, 40.0)  # 30 <= 0.9 x 40
    checks.hpe_learned(type("Fit", (), {"test": {"error_mm": 30.0}})(), 45.0, 40.0)  # a FitResult's test error
    for error, untrained, mean_pose, name in ((41.0, 60.0, 40.0, "mean-pose"), (37.0, 40.0, 60.0, "untrained"),
                                              (36.5, 40.0, 40.0, "untrained"), (math.nan, 40.0, 40.0, "untrained")):
        with pytest.raises(AssertionError, match=f"did not learn.*{name}"):
            checks.hpe_learned(error, untrained, mean_pose)
    with pytest.raises(AssertionError, match=r"HPE seed 2 did not learn: test error 39\.00 mm, not below 36\.00 mm"):
        checks.hpe_learned(39.0, 50.0, 40.0, what="HPE seed 2")


def test_har_learned_needs_accuracy_clearly_above_chance():
    checks.har_learned(0.2)  # 9 x chance
    checks.har_learned(0.6, classes=2, factor=1.0)
    for accuracy in (1 / 45, 5 / 45, 0.0, math.nan):
        with pytest.raises(AssertionError, match="did not learn"):
            checks.har_learned(accuracy)
    with pytest.raises(AssertionError, match=r"accuracy 10\.0 %, not above 11\.1 % \(5 x chance, 1/45\)"):
        checks.har_learned(0.1)


def _history(train_losses, val_losses=None):
    val_losses = val_losses or [1.0 - 0.1 * e for e in range(len(train_losses))]
    return [{"epoch": e, "train_loss": t, "val_loss": v} for e, (t, v) in enumerate(zip(train_losses, val_losses))]


def test_losses_fall_needs_finite_losses_and_both_to_fall():
    checks.losses_fall(_history([1.0, 0.9]))
    checks.losses_fall(_history([1.0, 1.2, 0.95], [1.0, 0.9, 1.1]))  # the last train loss, the best later val loss
    checks.losses_fall(_history([1.0, 0.5], [0.5, 0.6]))  # a validation loss lowest after the first epoch: it moved
    checks.losses_fall([{"epoch": e, "train_loss": t} for e, t in enumerate([1.0, 0.9])])  # no validation recorded
    for train_losses, match in (([1.0, 1.0], "did not learn: training loss"), ([1.0, 0.96], "ratio 0.960"),
                                ([1.0, 1.1], "did not learn: training loss"), ([1.0], "a fall needs at least 2"),
                                ([], "a fall needs at least 2"), ([math.nan, 0.5], "train_loss is nan at epoch 0"),
                                ([1.0, math.nan, 0.5], "train_loss is nan at epoch 1"),
                                ([1.0, math.inf], "train_loss is inf")):
        with pytest.raises(AssertionError, match=match):
            checks.losses_fall(_history(train_losses))
    for val_losses, match in (([1.0, math.nan], "val_loss is nan at epoch 1"),
                              ([0.5, 0.5], "validation loss 0.5 at the first epoch and the same at every later one"),
                              ([0.5, 0.5, 0.5], "the weights never moved")):
        with pytest.raises(AssertionError, match=match):
            checks.losses_fall(_history([1.0, 0.5], val_losses))
    with pytest.raises(AssertionError, match=r"baseline, seed 1 did not learn.*ratio 0\.990"):
        checks.losses_fall(_history([1.0, 0.99]), what="baseline, seed 1")


# ----------------------------------------------------------------------------- the references

def test_the_untrained_error_is_that_of_the_network_pretraining_starts_from(smoke, tmp_path, monkeypatch):
    """pretrain_hpe's network, taken before its first step, scores exactly untrained_hpe_error_mm."""
    fpha, preset, cache = smoke
    seen = {}

    class Seen(Exception):
        pass

    def first_look(net, task, cfg, *args, **kwargs):
        seen["error_mm"] = HPETask(cache, splits(fpha, preset, 1)).evaluate(net, "test", cfg)["error_mm"]
        raise Seen  # no training needed

    monkeypatch.setattr(standalone, "fit", first_look)
    for model, film in (("deepprior", preset.film), ("resnet", "none")):
        with pytest.raises(Seen):
            pretrain_hpe(fpha, preset, film=film, seed=1, cache=cache, root=tmp_path, progress=False, model=model)
        assert checks.untrained_hpe_error_mm(fpha, preset, 1, film, model, cache) == pytest.approx(seen["error_mm"],
                                                                                                   rel=1e-6)


def test_the_mean_pose_guess(smoke):
    fpha, preset, cache = smoke
    split = splits(fpha, preset, 0)
    guess = checks.mean_pose_error_mm(cache, split["train"], split["test"])
    rows = FrameDataset(cache, split["test"]).rows
    centre_only = mean_joint_error(np.repeat(cache.centres[rows][:, None], 21, 1), cache.joints[rows])
    assert 0 < guess < centre_only  # the mean pose beats putting every joint at the crop centre
    # the same guess scored on the training frames is the spread of the poses around their mean
    train_rows = FrameDataset(cache, split["train"]).rows
    offsets = cache.joints[train_rows] - cache.centres[train_rows][:, None]
    spread = np.linalg.norm(offsets - offsets.mean(0), axis=-1).mean()
    assert checks.mean_pose_error_mm(cache, split["train"], split["train"]) == pytest.approx(spread, rel=1e-6)


def test_the_references_are_kept_and_read_back_per_seed_and_model(smoke, tmp_path, monkeypatch):
    """hpe_references computes once per (data, code, preset, seed, FiLM, model) and reads the kept
    numbers back after; another seed or FiLM placement is computed afresh, and a kept file whose key
    differs is not trusted."""
    fpha, preset, cache = smoke
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path))
    calls = []
    real = checks.untrained_hpe_error_mm

    def counted(*args, **kwargs):
        calls.append(args[2:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "untrained_hpe_error_mm", counted)
    first = checks.hpe_references(fpha, preset, 0, "none", cache=cache)
    assert checks.hpe_references(fpha, preset, 0, "none", cache=cache) == first and len(calls) == 1
    other = checks.hpe_references(fpha, preset, 1, "none", cache=cache)
    checks.hpe_references(fpha, preset, 0, preset.film, cache=cache)
    assert len(calls) == 3 and other != first
    kept = sorted((tmp_path / preset.name / "models" / "references").glob("*.json"))
    assert len(kept) == 3
    for path in kept:  # a file whose key is not this call's is computed again, and replaced
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "key": {**record["key"], "seed": 99}, "references_mm": [0.0, 0.0]}))
    assert checks.hpe_references(fpha, preset, 0, "none", cache=cache) == first and len(calls) == 4


# ----------------------------------------------------------------------------- they bite

def test_with_no_op_optimiser_steps_the_pretraining_checks_fail(smoke, tmp_path, monkeypatch):
    """The smoke preset's HPE and HAR, trained as the notebooks train them, pass hpe_learned and
    har_learned; trained with every optimiser step a no-op, they fail them."""
    fpha, preset, cache = smoke
    refs = checks.hpe_references(fpha, preset, 0, "none", cache=cache)
    _, hpe = pretrain_hpe(fpha, preset, seed=0, cache=cache, root=tmp_path / "trained", progress=False)
    _, har = pretrain_har(fpha, preset, seed=0, root=tmp_path / "trained", progress=False)
    checks.hpe_learned(hpe, *refs)
    checks.har_learned(har.test["accuracy"])

    monkeypatch.setattr(train, "adam", _noop)
    NoOpAdam.steps = 0
    _, hpe = pretrain_hpe(fpha, preset, seed=0, cache=cache, root=tmp_path / "no-op", progress=False)
    _, har = pretrain_har(fpha, preset, seed=0, root=tmp_path / "no-op", progress=False)
    assert NoOpAdam.steps > 0 and len(hpe.history) >= 2 and len(har.history) >= 2  # they did train, in vain
    with pytest.raises(AssertionError, match="did not learn"):
        checks.hpe_learned(hpe, *refs)
    with pytest.raises(AssertionError, match="did not learn"):
        checks.har_learned(har.test["accuracy"])


@pytest.fixture(scope="module")
def pretrained_runs(smoke, smoke_localiser, tmp_path_factory):
    """The pre-trained models of seed 0 that every fusion method starts from, trained into a temporary
    runs folder, and a copy of the localiser of the depth-centred test set: (the models, that folder)."""
    fpha, preset, cache = smoke
    runs = tmp_path_factory.mktemp("runs")
    copy_smoke_localiser(smoke_localiser, runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HANDFUSE_RUNS", str(runs))
        return pretrained(fpha, preset, 0, film=preset.film, cache=cache, progress=False), runs


@pytest.fixture
def starting_points(pretrained_runs):
    return pretrained_runs[0]


@pytest.mark.parametrize("method", sorted(BUILTIN))
def test_with_no_op_optimiser_steps_losses_fall_fails(method, smoke, starting_points, tmp_path, monkeypatch):
    """A fine-tuning of the smoke preset passes losses_fall; with every step a no-op it fails it."""
    fpha, preset, cache = smoke
    cfg = resolved_config(method, preset, {})
    _, fitted = finetune(method, starting_points, fpha, preset, cfg, 0, cache=cache, root=tmp_path / "trained",
                         progress=False)
    checks.losses_fall(fitted.history, what=method)

    monkeypatch.setattr(train, "adam", _noop)
    NoOpAdam.steps = 0
    _, frozen = finetune(method, starting_points, fpha, preset, cfg, 0, cache=cache, root=tmp_path / "no-op",
                         progress=False)
    assert NoOpAdam.steps > 0 and len(frozen.history) == len(fitted.history)
    assert len({h["val_loss"] for h in frozen.history}) == 1  # the weights never moved: one validation loss
    with pytest.raises(AssertionError, match=f"{method} did not learn"):
        checks.losses_fall(frozen.history, what=method)
    # the frozen validation loss fails it on its own, even beside a training loss that fell (by batch luck, say)
    lucky = [{**h, "train_loss": t["train_loss"]} for h, t in zip(frozen.history, fitted.history)]
    with pytest.raises(AssertionError, match=f"{method} did not learn: validation loss .* the same at every later one"):
        checks.losses_fall(lucky, what=method)


def test_a_nan_loss_fails_losses_fall(smoke, starting_points, tmp_path, monkeypatch):
    fpha, preset, cache = smoke
    monkeypatch.setattr(train, "adam", _nan)
    cfg = resolved_config("baseline", preset, {})
    _, poisoned = finetune("baseline", starting_points, fpha, preset, cfg, 0, cache=cache, root=tmp_path,
                           progress=False)
    assert math.isnan(poisoned.history[0]["train_loss"])
    with pytest.raises(AssertionError, match="train_loss is nan at epoch 0"):
        checks.losses_fall(poisoned.history)


# ----------------------------------------------------------------------------- in the notebooks themselves

NO_OP = """import torch
import handfuse.train


class NoOpAdam(torch.optim.Adam):  # every optimiser step changes nothing
    def step(self, closure=None):
        pass


handfuse.train.adam = lambda params, lr=1e-3, weight_decay=0.0, capturable=False: NoOpAdam(params, lr=lr, weight_decay=weight_decay)"""


def _run_no_op(notebook: str, tmp_path, runs, monkeypatch, **parameters):
    """Execute ``notebook`` in the smoke preset with a cell after its parameters that makes every optimiser
    step a no-op (one worker, so every run trains in the kernel): the error, and the source of the one
    cell that failed."""
    import nbformat
    import papermill

    from handfuse.paths import REPO

    nb = nbformat.read(REPO / "notebooks" / f"{notebook}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(NO_OP))
    nbformat.write(nb, tmp_path / "no-op.ipynb")
    for name, value in (("HANDFUSE_RUNS", runs), ("HANDFUSE_WORKERS", 1), ("HANDFUSE_PRESET", "smoke"),
                        ("HANDFUSE_FIGURES", tmp_path / "figures")):
        monkeypatch.setenv(name, str(value))  # the kernel inherits them
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(str(tmp_path / "no-op.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"preset": "smoke", **parameters}, cwd=str(REPO / "notebooks"),
                                   progress_bar=False, kernel_name="python3")
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    [cell] = [c for c in executed.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    return failed.value, cell.source


def test_with_no_op_optimiser_steps_01s_checks_fail(smoke_localiser, tmp_path, monkeypatch):
    """01 with every step a no-op: the checks cell fails on the first model that did not learn.  The localiser,
    01's one job that the checks do not read, is copied in as a run that learned (so it is loaded, not
    trained), and one seed spares the other seeds' pose estimators, which the checks do not read either."""
    copy_smoke_localiser(smoke_localiser, tmp_path / "runs")
    error, cell = _run_no_op("01_standalone", tmp_path, tmp_path / "runs", monkeypatch, seeds=1)
    assert error.ename == "AssertionError" and "the HPE, plain did not learn" in error.evalue, error.evalue
    assert cell.endswith('print("standalone checks passed")')  # the checks cell, and no cell before it, failed


def test_with_no_op_fine_tuning_steps_02s_checks_fail(pretrained_runs, tmp_path, monkeypatch):
    """02 on pre-trained models that learned (loaded, as 01 or an earlier run leaves them), its
    fine-tunings' steps made no-ops: the checks cell fails on the first fine-tuning."""
    shutil.copytree(pretrained_runs[1], tmp_path / "runs")
    error, cell = _run_no_op("02_baseline", tmp_path, tmp_path / "runs", monkeypatch, seeds=1)
    assert error.ename == "AssertionError" and "fine-tuning of seed 0 (deepprior + lstm) did not learn" in error.evalue, \
        error.evalue
    assert cell.endswith('print("baseline checks passed")')
