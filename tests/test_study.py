"""The study API (handfuse.study): one object opens the data once; its verbs give the records the
lower layers give; a method and a p_eq schedule plug in from outside the package."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from handfuse import finetune
from handfuse.config import get_preset
from handfuse.methods import HEADLINE, METHODS, P_EQ_SCHEDULES, build, headline, method_config
from handfuse.records import RunRecord
from handfuse.study import Study
from handfuse.train import FitResult

from conftest import copy_smoke_localiser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory, smoke_localiser):
    runs = tmp_path_factory.mktemp("study-runs")
    copy_smoke_localiser(smoke_localiser, runs)  # of the depth-centred test set: a copy, not trained again
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HANDFUSE_RUNS", str(runs))
        m.setenv("HANDFUSE_WORKERS", "1")
        yield Study("smoke", seeds=2, progress=False)


def test_a_study_run_is_the_lower_layers_run(study):
    records = study.run("baseline", trained=False)
    assert [r.seed for r in records] == [0, 1] and all(isinstance(r, RunRecord) for r in records)
    direct = finetune.run("baseline", study.fpha, study.P, 1, study.tests, trained=False, cache=study.cache,
                          progress=False)
    assert records[1].test == direct.test and records[1].pretrained == direct.pretrained
    assert records[1].test.gt.error_mm == pytest.approx(records[1].pretrained.hpe_error_mm, rel=1e-3)
    row = study.aggregate(records)
    assert row["gt"]["error_mm"][0] == pytest.approx(np.mean([r.test.gt.error_mm for r in records]))
    again = RunRecord.from_json(records[0].to_json())
    assert again == records[0] and again.to_json() == records[0].to_json()


def test_rescore_scores_the_same_weights_with_other_options(study):
    fb, = study.run("feedback", seeds=[0], keep_model=True, **headline("feedback"))
    assert fb.model is not None and fb.config["p_eq"] == HEADLINE["feedback"]["p_eq"]
    as_run = study.rescore(fb, centres=("gt",))
    assert as_run.test.gt == fb.test.gt and as_run.test.depth is None and as_run.model is None
    fed_w_eq = study.rescore(fb, eval_feed="w_eq")
    assert fed_w_eq.frame_error_mm["gt"] != fb.frame_error_mm["gt"]  # the fed action reaches the poses
    assert fb.model.cfg.eval_feed == "prediction"  # the options apply to the rescoring only
    with pytest.raises(ValueError, match="holds no live model"):
        study.rescore(fed_w_eq)


def test_bad_parameters_are_refused_by_name_before_any_work(tmp_path, monkeypatch):
    from handfuse.errors import ConfigError

    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "runs"))
    for kwargs, name in (({"seeds": 0}, "--seeds"), ({"device": "gpu"}, "--device"), ({"film": "head"}, "fusion.film"),
                         ({"data_root": tmp_path}, "--data-root")):
        with pytest.raises(ConfigError, match=f"parameter '{name}'"):
            Study("smoke", **kwargs)
    assert not (tmp_path / "runs").exists()


def test_the_data_layer_imports_neither_the_models_nor_the_training_loop():
    code = ("import sys; import handfuse.fpha, handfuse.cache, handfuse.datasets, handfuse.preprocess, handfuse.synth, "
            "handfuse.paths, handfuse.datastats; print(sorted(m for m in sys.modules if m.startswith("
            "('handfuse.models', 'handfuse.train', 'handfuse.config', 'handfuse.methods'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


# ----------------------------------------------------------------------------- extending: docs/extending.md


def _load_example(monkeypatch):
    spec = importlib.util.spec_from_file_location("fourth_method", ROOT / "examples" / "fourth_method.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(METHODS, "smoothed", METHODS.get("smoothed"))  # restored after the test
    del METHODS["smoothed"]
    monkeypatch.setitem(HEADLINE, "smoothed", None)
    module.plug_in()
    return module


def test_a_fourth_method_registered_from_outside_runs_through_the_study(study, monkeypatch):
    example = _load_example(monkeypatch)
    assert headline("smoothed") == {}
    records = study.grid({"smoothed": {"method": "smoothed"}, "baseline": {"method": "baseline"}}, seeds=[0],
                         keep_model=["smoothed"])
    r, = records["smoothed"]
    assert isinstance(r.model, example.SmoothedBaseline) and r.method == "smoothed" and r.history
    assert np.isfinite(r.test.gt.error_mm) and np.isfinite(r.test.depth.error_mm)
    assert float(r.model.rate.detach().abs().max()) > 0, "the smoothing rate did not learn"
    assert r.test != records["baseline"][0].test  # another method, not the baseline under another name
    with pytest.raises(ValueError, match="already registered"):
        example.plug_in()


def test_registering_a_method_checks_its_class_and_defaults(monkeypatch):
    from handfuse.errors import ConfigError
    from handfuse.methods import register_method
    from handfuse.methods.baseline import SequentialBaseline

    monkeypatch.setattr("handfuse.methods.METHODS", dict(METHODS))
    with pytest.raises(TypeError, match="not a FusionMethod"):
        register_method("x", dict)
    with pytest.raises(ConfigError, match="x.p_eqq"):
        register_method("x", SequentialBaseline, {"p_eqq": 0.5})


def _spied_schedule(calls: list):
    def late_feedback(p_eq: float, epoch: int, epochs: int) -> float:
        calls.append((epoch, epochs))
        return 1.0 if epoch == 0 else p_eq  # w_eq only in the first epoch, the coin after
    return late_feedback


def test_the_epoch_reaches_the_coin_through_a_registered_schedule(smoke_fusion_data, tmp_path, monkeypatch):
    from conftest import random_fusion_models

    fpha, cache, _, batch = smoke_fusion_data
    calls = []
    monkeypatch.setitem(P_EQ_SCHEDULES, "late", _spied_schedule(calls))
    cfg = method_config("feedback", p_eq=0.0, p_eq_schedule="late", film="both")
    P = get_preset("smoke")
    models = random_fusion_models(3, False, "both")
    models.results = {k: FitResult() for k in ("hpe", "hpe_film", "har")}
    model, result = finetune.finetune("feedback", models, fpha, P, cfg, 0, cache=cache, root=tmp_path, progress=False)
    epochs = P.train_fuse.epochs
    assert sorted(set(calls)) == [(e, epochs) for e in range(epochs)]  # every epoch, with the epoch count
    model.train()
    later = batch["mask"][:, 1:]  # the valid frames after frame 0 (always fed w_eq)
    for epoch, fed_w_eq in ((0, True), (1, False)):  # the scheduled value is the coin's: p = 1, then p_eq = 0
        model.at_epoch(epoch, epochs)
        out = model(batch["depth"], batch["centre"], batch["mask"])
        assert out["fed_w_eq"][:, 1:][later].tolist() == [fed_w_eq] * int(later.sum())
    with pytest.raises(Exception, match="fusion.p_eq_schedule"):
        method_config("feedback", p_eq_schedule="nonesuch")


def test_the_default_schedule_is_the_original_constant_coin(smoke_fusion_data):
    from conftest import random_fusion_models

    _, _, _, batch = smoke_fusion_data
    model = build("feedback", random_fusion_models(4, False, "both"), 125.0, method_config("feedback", p_eq=0.3)).train()
    fed = []
    for epoch in (0, 5):
        model.at_epoch(epoch, 6)
        assert model.p_eq_now() == 0.3
        torch.manual_seed(7)
        fed.append(model(batch["depth"], batch["centre"], batch["mask"])["fed_w_eq"])
    assert torch.equal(fed[0], fed[1])


def test_the_pose_only_control_keeps_its_action_recogniser_exactly_as_pre_trained(smoke_fusion_data, tmp_path):
    """02's control (w_nll = 0, train_har = False): the HAR's weights stay the pre-trained ones, bit for
    bit.  With w_nll = 0 alone they would not: Adam's weight decay moves every trainable weight."""
    from conftest import random_fusion_models

    fpha, cache, _, _ = smoke_fusion_data
    P = get_preset("smoke")
    har = {}
    for frozen in (True, False):
        models = random_fusion_models(5, False, P.film)
        models.results = {k: FitResult() for k in ("hpe", "hpe_film", "har")}
        before = {k: v.clone() for k, v in models.har.state_dict().items()}
        cfg = method_config("baseline", w_nll=0.0, w_pose=1.0, train_har=not frozen, film=P.film)
        model, _ = finetune.finetune("baseline", models, fpha, P, cfg, 0, cache=cache, root=tmp_path / str(frozen),
                                     progress=False)
        har[frozen] = all(torch.equal(v, before[k]) for k, v in model.har.state_dict().items())
        assert not all(torch.equal(v, w) for v, w in zip(model.hpe.state_dict().values(),
                                                       models.hpe.state_dict().values())), "the HPE did not train"
    assert har[True], "the frozen control's HAR moved"
    assert not har[False], "with w_nll = 0 alone the HAR moves (weight decay): the control must freeze it"


def test_data_is_called_fpha_only_when_it_looks_like_fpha(tmp_path):
    from conftest import make_tiny_fpha

    from handfuse.fpha import SPLIT_FILE
    from handfuse.paths import ensure_synthetic
    from handfuse.plots import data_source

    assert data_source(ensure_synthetic("smoke")) == "synthetic"
    assert data_source(make_tiny_fpha(tmp_path / "tiny")) == "data folder 'tiny'"  # FPHA's format, 4 sequences
    full = tmp_path / "FPHA"
    full.mkdir()
    lines = [f"Subject_{1 + i % 6}/open_milk/{i} 0" for i in range(1175)]
    (full / SPLIT_FILE).write_text("Training 600\n" + "\n".join(lines[:600]) + "\nTest 575\n" + "\n".join(lines[600:]))
    assert data_source(full) == "FPHA"
    (full / SPLIT_FILE).write_text("\n".join(lines).replace("Subject_6/", "Subject_7/"))  # not FPHA's subjects
    assert data_source(full) == "data folder 'FPHA'"


def _train_har(root: Path, runs: Path) -> dict:
    import json

    done = subprocess.run([sys.executable, "-m", "handfuse", "train", "har", "--preset", "smoke", "--data-root",
                           str(root), "--runs", str(runs)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test scores on data folder 'data'" in done.stderr  # it says which data its numbers are on
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_data_regenerated_at_the_same_path_trains_anew(tmp_path):
    """A run is keyed by the data's contents, not only its path: the same command on regenerated data
    trains a new run and leaves the old one alone."""
    from handfuse.synth import generate

    cfg = replace(get_preset("smoke").synth, fps=2.0, duration_s=1.0, scene="v1")  # any data will do: v1 renders faster
    root, runs = tmp_path / "data", tmp_path / "runs"
    generate(root, cfg, workers=2)
    (root / "synth_info.json").unlink()  # an FPHA-format root: the command reads it as it would read yours
    first = _train_har(root, runs)
    old = (Path(first["run"]) / "result.json").read_bytes()
    assert _train_har(root, runs)["run"] == first["run"]  # the same data: the finished run is reused
    shutil.rmtree(root)
    generate(root, replace(cfg, seed=1), workers=2)  # other data, same path
    (root / "synth_info.json").unlink()
    second = _train_har(root, runs)
    assert second["run"] != first["run"] and second["test"] != first["test"]
    assert (Path(first["run"]) / "result.json").read_bytes() == old  # the old run is left alone


def test_stored_scores_are_keyed_by_method_name_and_code(tmp_path, monkeypatch):
    from handfuse import runs
    from handfuse.runs import ScoreStore

    model = build("baseline", __import__("conftest").random_fusion_models(0, False, "fc"), 125.0,
                  method_config("baseline", film="fc"))
    data = Study("smoke", progress=False).tests["gt"]
    paths = {ScoreStore(tmp_path, "w", name)._path(model, data) for name in ("baseline", "feedback")}
    assert len(paths) == 2  # equal options, other methods: never the same stored score
    before = ScoreStore(tmp_path, "w", "baseline")._path(model, data)
    monkeypatch.setattr(runs, "code_key", lambda: {"version": "0.1.0", "sources": "changed"})
    assert ScoreStore(tmp_path, "w", "baseline")._path(model, data) != before
