"""A bad notebook parameter (papermill's -p) stops the notebook in its set-up cell, before any work,
with one error naming the parameter (the CLI's options: tests/test_params.py)."""
from __future__ import annotations

import pytest

from handfuse.paths import REPO


@pytest.mark.parametrize("notebook, params, name", [
    ("03_feedback", {"p_eq_sweep": [1.0, 1.5]}, "fusion.p_eq"),
    ("04_ensemble", {"eta_zeta_grid": [0.1, -0.5]}, "fusion.eta"),
    ("02_baseline", {"device": "cuda:99"}, "--device"),  # a device no machine has: refused with a GPU too
    ("07_explore", {"sequence": -1}, "sequence"),
    ("06_generality", {"p_eq": 1.5}, "fusion.p_eq"),
    ("06_generality", {"methods": ["baseline", "boost"]}, "methods"),
    ("08_when_fusion_helps", {"couplings": [0.5]}, "couplings"),
    ("08_when_fusion_helps", {"subjects": 0}, "subjects"),
    ("08_when_fusion_helps", {"sweep_preset": "tiny"}, "sweep_preset"),
    ("08_when_fusion_helps", {}, "out"),  # no results of 03 to take the remedies from
    ("03_feedback", {"remedies": ["dropout"]}, "remedies"),
])
def test_a_bad_notebook_parameter_stops_the_notebook_before_any_work(tmp_path, monkeypatch, notebook, params, name):
    import papermill

    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "runs"))  # the kernel inherits it
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"preset": "smoke", **params}, cwd=str(REPO / "notebooks"),
                                   progress_bar=False, kernel_name="python3")
    assert f"parameter '{name}'" in failed.value.evalue and failed.value.ename == "ConfigError", failed.value.evalue
    assert not (tmp_path / "runs").exists(), "a refused parameter must not start any work"


def test_the_sweep_preset_is_the_cpu_preset_sized_down_and_nothing_else():
    """08's sweep preset differs from the cpu preset only in what the notebook says it sizes down (the
    subjects, the crop and the pose estimators that read it): the data's other knobs, the recogniser,
    augmentation and every training setting are the cpu preset's."""
    from dataclasses import asdict

    from handfuse.config import SWEEP, get_preset
    from handfuse.models.registry import hpe_entry

    cpu, sweep = get_preset("cpu"), get_preset(SWEEP["cpu"])
    differs = {k for k, v in asdict(sweep).items() if asdict(cpu)[k] != v}
    assert differs == {"name", "synth", "preprocess", "hpe", "resnet_hpe"}
    assert {k for k, v in asdict(sweep.synth).items() if asdict(cpu.synth)[k] != v} == {"subjects"}
    assert {k for k, v in asdict(sweep.preprocess).items() if asdict(cpu.preprocess)[k] != v} == {"crop"}
    assert sweep.synth.subjects < cpu.synth.subjects and sweep.preprocess.crop < cpu.preprocess.crop
    net = hpe_entry("deepprior").build(sweep.hpe)
    assert net.channels_last_safe  # the fast memory format on CPU, as the cpu preset's
    assert SWEEP.get("smoke", "smoke") == "smoke"  # the test fixture sweeps at its own size
