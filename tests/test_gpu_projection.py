"""The GPU projection (benchmarks.gpu_projection) on fake measurements: run counts, the workers file's
schema and choice, and the projected minutes, computed by hand."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks.gpu_projection import KINDS, notebook_runs, project, run_shape, load_measurements, write, workers_file
from handfuse.config import get_preset


def _fake(step_s: dict[int, float]) -> list[str]:
    """gpu_runs lines: every kind at ``step_s[n]`` seconds per step with n workers, 4 items per step."""
    return [json.dumps({"workers": n, "rows": [{"kind": k, "graphs": False, "workers": n, "seconds_per_step": s,
                                                "items_per_step": 4, "items_per_s": n * 4 / s, "peak_memory_gib": 2.0 * n}
                                               for k in KINDS]
                        + [{"kind": "hpe", "graphs": True, "error": "x"}]}) for n, s in step_s.items()]


def test_paper_run_counts_and_shapes():
    runs = notebook_runs()
    assert runs["01_standalone"] == {"hpe": 3, "har": 4} and runs["02_baseline"] == {"hpe": 2, "baseline": 6}
    assert runs["03_feedback"]["feedback"] == 3 + 3 + 6 + 6 and runs["04_ensemble"]["ensemble"] == 6
    shape = run_shape(get_preset("paper"))  # 6 subjects x 45 actions x 2 training reps = 540; 81 held out
    assert shape["baseline"] == {"epochs": 20, "steps": math.ceil(459 / 4), "eval_items": 81, "batch": 4}
    assert shape["hpe"]["steps"] == 459 * 84 // 128 and shape["hpe"]["epochs"] == 60


def test_projection_and_workers_file(tmp_path):
    preset = get_preset("paper")
    # 2 workers: each step twice as slow (no gain); 4: 1.5x slower (x2.67); 8: 2.9x slower (x2.76, within 5 %)
    measured = load_measurements(_fake({1: 0.01, 2: 0.02, 4: 0.015, 8: 0.029}))
    assert set(measured) == {1, 2, 4, 8} and all("error" not in r for rows in measured.values() for r in rows.values())
    w = workers_file(measured, preset, "fake")
    assert set(w) == {"device", "workers_per_gpu", "runs_per_hour", "peak_memory_gib"}
    assert w["runs_per_hour"]["2"] == pytest.approx(w["runs_per_hour"]["1"])
    assert w["runs_per_hour"]["4"] == pytest.approx(w["runs_per_hour"]["1"] * 4 / 1.5)
    assert w["workers_per_gpu"] == 4 and w["peak_memory_gib"]["8"] == 16.0
    shape = run_shape(preset)["baseline"]
    one = 20 * (shape["steps"] * 0.01 + 0.01 / 4 / 3 * 81) / 60  # minutes of one baseline run alone
    p = project(measured, preset, 1)
    assert p["run_minutes"]["baseline"] == pytest.approx(one)
    assert p["minutes"]["02_baseline"] == pytest.approx(6 * one + 2 * p["run_minutes"]["hpe"])
    assert p["total_minutes"] == pytest.approx(sum(p["minutes"].values()))
    assert project(measured, preset, 4)["minutes"]["02_baseline"] == pytest.approx(2 * 1.5 * one + 1.5 * p["run_minutes"]["hpe"])
    workers, projection = write(measured, preset, "fake", tmp_path, graphs=False)
    assert json.loads((tmp_path / "workers.json").read_text()) == workers
    saved = json.loads((tmp_path / "reproduce_paper_projection.json").read_text())
    assert saved["at_workers_per_gpu"]["workers"] == 4 and saved["assumptions"]
