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
    ("08_when_fusion_helps", {"fine_tune_epochs": 0}, "fine_tune_epochs"),
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


@pytest.mark.parametrize("couplings", [(0.5,), (0.0, 0.0), (0.0, 1.5), ("0", 1.0)])
def test_a_presets_bad_sweep_couplings_are_refused_by_name(couplings):
    """08's default couplings are its preset's (``couplings = None``): a preset cannot hold a sweep 08
    would refuse as a parameter."""
    from handfuse.config import Preset
    from handfuse.errors import ConfigError

    with pytest.raises(ConfigError, match="parameter 'sweep_couplings'"):
        Preset("mine", sweep_couplings=couplings)
    assert Preset("mine", sweep_couplings=(0.0, 1.0)).sweep_couplings == (0.0, 1.0)
