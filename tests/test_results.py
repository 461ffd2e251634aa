"""One run's results never mix with another's (handfuse/results.py): a results file is never
overwritten by a run with other parameters or data, a summary never gathers two runs, and a
reproduction keeps everything it produces under its --out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from handfuse import report
from handfuse.paths import REPO
from handfuse.results import (ResultsConflict, ResultsFile, check_one_run, differences, load_results, run_record,
                              write_json)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A valid FPHA-shaped root (conftest's tiny tree)."""
    from conftest import make_tiny_fpha

    return make_tiny_fpha(tmp_path_factory.mktemp("tiny") / "fpha")


def _record(fingerprint="abc", source="synthetic", **params):
    return run_record(source, fingerprint, {"preset": "smoke", "seed": 0, **params})


def test_differences_name_the_data_and_every_shared_parameter_that_differs():
    a, b = _record(p_eq=0.5, seeds=3), _record(p_eq=0.9, seeds=3, eta=0.5)
    assert differences(a, b) == ["p_eq: 0.5 against 0.9"]  # eta is recorded by one only: not a difference
    assert differences(a, _record(p_eq=0.5, seeds=3)) == []
    assert differences(_record(p_eq=(1.0, 0.6)), _record(p_eq=[1.0, 0.6])) == []  # as JSON gives it back
    other = differences(a, _record("xyz", "FPHA", p_eq=0.5, seeds=1))
    assert other == ["data: synthetic (fingerprint abc) against FPHA (fingerprint xyz)", "seeds: 3 against 1"]
    assert differences(a, {"data": "synthetic", "data_fingerprint": "abc"}) == [
        "parameters: not recorded (a results file written by an older handfuse)"]


def test_a_results_file_is_never_overwritten_by_another_run(tmp_path):
    path = tmp_path / "results" / "feedback.json"
    first = ResultsFile(path, _record(p_eq=0.9)).claim()
    first.write({"rows": {"feedback": 1}})
    assert json.loads(path.read_text())["parameters"]["p_eq"] == 0.9
    ResultsFile(path, _record(p_eq=0.9)).claim().write({"rows": {"feedback": 2}})  # the same run again: replaced
    assert json.loads(path.read_text())["rows"] == {"feedback": 2}
    with pytest.raises(ResultsConflict, match=r"feedback.json holds the results of another run \(p_eq: 0.5 against 0.9;"):
        ResultsFile(path, _record(p_eq=0.5)).claim()
    with pytest.raises(ResultsConflict, match="data: synthetic .* against synthetic"):
        ResultsFile(path, _record("new-data", p_eq=0.9)).claim()
    later = ResultsFile(path, _record(p_eq=0.9)).claim()  # claimed, then another run writes meanwhile
    write_json(path, {**_record(seed=7, p_eq=0.9), "rows": {}})
    with pytest.raises(ResultsConflict, match="seed: 0 against 7"):
        later.write({"rows": {"feedback": 3}})
    assert json.loads(path.read_text())["parameters"]["seed"] == 7  # left as the other run wrote it


def test_a_summary_never_gathers_two_runs_and_names_the_files_and_what_differs(tmp_path):
    folder = tmp_path / "results"
    write_json(folder / "baseline.json", {**_record(seeds=3, attention=False), "rows": {}})
    write_json(folder / "feedback.json", {**_record(seeds=3, attention=False, p_eq=0.5), "rows": {}})
    write_json(folder / "summary.json", {"not": "gathered"})
    results = load_results(folder)
    assert sorted(results) == ["baseline", "feedback"]
    check_one_run(results)  # p_eq is feedback's alone: one run
    write_json(folder / "ensemble.json", {**_record(seeds=3, p_eq=0.9), "rows": {}})
    with pytest.raises(ResultsConflict, match=r"ensemble.json against feedback.json: p_eq: 0.9 against 0.5") as refused:
        check_one_run(load_results(folder))
    assert "baseline.json" not in str(refused.value)  # baseline agrees with both
    write_json(folder / "ensemble.json", {**_record(seeds=2, p_eq=0.5), "rows": {}})
    with pytest.raises(ResultsConflict, match=r"baseline.json against ensemble.json: seeds: 3 against 2"):
        check_one_run(load_results(folder))


def _method_file(p_eq, rows):
    sweep = {"film_response=0.0": {"1.0": {"accuracy": [0.5, 0.0], "error_mm": [14.0, 0.0]}}}
    return {**_record(seeds=1, p_eq=p_eq), "seeds": [0], "rows": rows, "untrained_sweep": sweep, "trained_sweep": {}}


def test_the_summary_of_a_partial_run_says_what_ran_and_with_which_parameters():
    rows = {"baseline": {"gt": {"error_mm": [12.0, 0.0], "accuracy": [60.0, 0.0]}},
            "feedback": {"gt": {"error_mm": [11.0, 0.0], "accuracy": [62.0, 0.0]}}}
    results = {"feedback": _method_file(0.35, rows)}
    text = report.summary_markdown(results, "smoke")
    assert "`p_eq` | `0.35` | every file" in text and "not run: `baseline.json`, `ensemble.json`" in text
    summary = report.summary_json(results, "smoke")
    assert summary["parameters"]["p_eq"] == 0.35 and summary["files"] == ["feedback"]
    assert report.expected_rows(results) == {"hpe", "hpe_oracle", "har_gt", "baseline", "feedback", "feedback_oracle"}
    with_remedy = {"feedback": {**results["feedback"], "remedies": {"feedback_late": {"chosen": "feed_after=3"}}}}
    assert report.expected_rows(with_remedy) - report.expected_rows(results) == {"feedback_late"}
    assert report.expected_rows({**results, "ensemble": {}}) > report.expected_rows(results)


def test_reproduce_keeps_its_run_under_out_and_refuses_an_out_holding_another_run(tmp_path, monkeypatch, tiny):
    """Every notebook gets ``out``; ``run.json`` records the parameters and the data's fingerprint and
    says complete only at the end; another run into that out is refused before any notebook starts."""
    import papermill

    from handfuse.reproduce import reproduce

    calls = []

    def fake(source, target, parameters, **kwargs):  # papermill without a kernel: records what it was given
        calls.append({**parameters, "_notebook": Path(source).stem})
        assert not json.loads((Path(target).parent / "run.json").read_text())["complete"]  # not while it runs
        shutil.copyfile(source, target)

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.delenv("HANDFUSE_FIGURES", raising=False)
    out = tmp_path / "run-a"
    reproduce("smoke", out, data_root=str(tiny), seed=0, only=["05", "08", "03"])
    assert [c["out"] for c in calls] == [str(out.resolve())] * 3
    assert [c["_notebook"] for c in calls] == ["03_feedback", "08_when_fusion_helps", "05_summary"]  # the summary last
    assert calls[0]["data_root"] == str(Path(tiny).resolve())
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["parameters"]["seed"] == 0 and run["data_fingerprint"]
    assert run["figures"] == str(out.resolve() / "figures") and (out / "timings.json").is_file()
    assert (out / "03_feedback.ipynb").is_file()
    calls.clear()
    with pytest.raises(ResultsConflict, match=r"holds another run \(seed: 1 against 0;"):
        reproduce("smoke", out, data_root=str(tiny), seed=1, only=["03"])
    assert calls == [] and json.loads((out / "run.json").read_text())["parameters"]["seed"] == 0
    monkeypatch.chdir(tmp_path)
    reproduce("smoke", Path("run-b"), data_root=str(tiny), seed=1, only=["03"], figures=Path("figs"))  # its own out
    assert json.loads((out / "run.json").read_text())["complete"]
    assert calls[-1]["out"] == str(tmp_path / "run-b")  # absolute: the kernels run in notebooks/
    assert json.loads((tmp_path / "run-b" / "run.json").read_text())["figures"] == str(tmp_path / "figs")


def test_figures_of_a_data_root_never_go_to_the_checkout(tmp_path, tiny):
    from handfuse.errors import ConfigError
    from handfuse.reproduce import reproduce

    with pytest.raises(ConfigError, match="--figures"):
        reproduce("smoke", tmp_path / "out", data_root=str(tiny), figures=REPO / "figures")
    assert not (tmp_path / "out").exists()


def test_figures_readme_lists_every_file_in_figures():
    import re

    readme = (REPO / "figures" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", readme, flags=re.M))
    files = {p.stem for p in (REPO / "figures").iterdir() if p.name != "README.md"}
    assert files and files <= listed, f"figures/ holds files figures/README.md does not list: {sorted(files - listed)}"
    assert listed <= files, f"figures/README.md lists figures that are not in figures/: {sorted(listed - files)}"


def test_two_papermill_runs_of_feedback_keep_their_own_results_and_summaries(tmp_path, monkeypatch):
    """03 with two p_eq into two outs: both results survive, each summary reports its own p_eq, the
    figures go to each out (never to the checkout's figures/), and a third run with another p_eq into
    a taken out stops in its set-up cell."""
    import papermill

    monkeypatch.delenv("HANDFUSE_FIGURES", raising=False)  # the kernels inherit this environment
    guarded = REPO / "figures" / "feedback_untrained_sweep.png"
    before = guarded.stat().st_mtime_ns if guarded.exists() else None

    def run(notebook, out, **params):
        papermill.execute_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb"), str(out / f"{notebook}.ipynb"),
                                   parameters={"preset": "smoke", "out": str(out), **params},
                                   cwd=str(REPO / "notebooks"), progress_bar=False, kernel_name="python3")

    outs = {p: tmp_path / f"p_eq-{p}" for p in (0.0, 1.0)}
    for p, out in outs.items():
        out.mkdir()
        run("03_feedback", out, seeds=1, p_eq=p, p_eq_sweep=[p], trained_p_eq=[p], remedies=[])
        run("05_summary", out)
    for p, out in outs.items():
        held = json.loads((out / "results" / "feedback.json").read_text())
        summary = json.loads((out / "results" / "summary.json").read_text())
        assert held["parameters"]["p_eq"] == p and held["p_eq"] == p
        assert summary["parameters"]["p_eq"] == p and summary["files"] == ["feedback"]
        assert f"| `p_eq` | `{p}` |" in (out / "results" / "summary.md").read_text()
        assert (out / "figures" / "feedback_untrained_sweep.png").is_file()
    assert (guarded.stat().st_mtime_ns if guarded.exists() else None) == before
    with pytest.raises(papermill.PapermillExecutionError) as refused:
        run("03_feedback", outs[0.0], seeds=1, p_eq=0.5, p_eq_sweep=[0.5], trained_p_eq=[0.5], remedies=[])
    assert refused.value.ename == "ResultsConflict" and "p_eq: 0.5 against 0.0" in refused.value.evalue
    assert refused.value.source.startswith("study = Study(")  # the set-up cell: no work started
    assert json.loads((outs[0.0] / "results" / "feedback.json").read_text())["parameters"]["p_eq"] == 0.0


def test_a_file_on_datasets_of_its_own_is_held_to_the_parameters_only(tmp_path):
    folder = tmp_path / "results"
    write_json(folder / "feedback.json", {**_record(seeds=3, p_eq=0.9), "rows": {}})
    write_json(folder / "when_fusion_helps.json", {**_record("sweep-data", seeds=3), "own_data": True})
    check_one_run(load_results(folder))  # other data, but its own on purpose
    write_json(folder / "when_fusion_helps.json", {**_record("sweep-data", seeds=2), "own_data": True})
    with pytest.raises(ResultsConflict, match="feedback.json against when_fusion_helps.json: seeds: 3 against 2"):
        check_one_run(load_results(folder))
    assert report.fingerprint(load_results(folder)) == "abc"  # the run's data, never the sweep's
