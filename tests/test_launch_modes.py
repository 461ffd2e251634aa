"""benchmarks.launch_modes on CPU: every kind under every mode, the compiled paths computing what the
eager one does (TorchDynamo's eager backend: no compiler here), and a failing mode reported in its row.
No timing is checked: on CPU the modes are the plumbing the GPU check runs."""
from __future__ import annotations

import pytest

from benchmarks import launch_modes as lm


@pytest.fixture(scope="module")
def measured():
    return lm.run("smoke", "cpu", kinds=lm.KINDS, modes=lm.MODES, steps=1, backend="eager")


def test_every_kind_runs_under_every_mode_and_computes_the_same_loss(measured):
    rows = {(r["kind"], r["mode"]): r for r in measured["rows"]}
    assert set(rows) == {(k, m) for k in lm.KINDS for m in lm.MODES}
    assert [r for r in rows.values() if "error" in r] == []
    for kind in lm.KINDS:
        eager = rows[(kind, "eager")]["loss"]
        for mode in lm.MODES:
            assert rows[(kind, mode)]["loss"] == pytest.approx(eager, rel=1e-5), (kind, mode)
    assert set(measured["fastest"]) == set(lm.KINDS) and set(measured["fastest"].values()) <= set(lm.MODES)


def test_a_mode_that_fails_gives_an_error_row_and_the_others_still_run():
    out = lm.run("smoke", "cpu", kinds=("hpe",), modes=("eager", "compile"), steps=1, backend="no-such-backend")
    rows = {r["mode"]: r for r in out["rows"]}
    assert "error" not in rows["eager"] and "no-such-backend" in rows["compile"]["error"]
    assert out["fastest"] == {"hpe": "eager"}


def test_compile_options_name_the_mode_for_inductor_only():
    assert lm.compile_options("eager", "inductor") is None and lm.compile_options("graphs", "inductor") is None
    assert lm.compile_options("reduce-overhead", "inductor") == {"mode": "reduce-overhead"}
    assert lm.compile_options("compile", "inductor") == {"mode": "default"}
    assert lm.compile_options("reduce-overhead", "eager") == {"backend": "eager"}
