"""The results table, the paired verdicts and the summary say what the numbers say."""
from __future__ import annotations

import pytest

from handfuse import report
from handfuse.results import ResultsConflict


def _runs(values, metric="accuracy"):
    return [{"seed": s, "test": {"gt": {metric: v}}} for s, v in enumerate(values)]


def test_paired_comparison_sees_a_consistent_gain_that_unpaired_intervals_would_miss():
    # large seed-to-seed spread, but b is always 1 point above a: a paired test must call it
    a, b = _runs([0.50, 0.70, 0.90]), _runs([0.51, 0.71, 0.91])
    assert "**better**" in report.compare("b", b, "a", a, "accuracy")
    assert "**worse**" in report.compare("a", a, "b", b, "accuracy")
    noisy = _runs([0.52, 0.69, 0.905])
    assert "not distinguishable" in report.compare("noisy", noisy, "a", a, "accuracy")
    assert "single seed" in report.compare("one", a[:1], "other", b[:1], "accuracy")


def test_lower_error_is_better():
    low, high = _runs([10.0, 11.0, 12.0], "error_mm"), _runs([12.0, 13.1, 14.0], "error_mm")
    assert "**better**" in report.compare("low", low, "high", high, "error_mm")
    with pytest.raises(ValueError, match="share no seed"):
        report.compare("x", low, "y", [{"seed": 9, "test": {"gt": {"error_mm": 1.0}}}], "error_mm")


def test_table_has_the_original_column_and_the_error_gap():
    rows = {"har_gt": {"gt": {"accuracy": [80.0, 2.0]}},
            "baseline": {"gt": {"error_mm": [12.0, 0.5], "accuracy": [75.5, 1.0]},
                         "depth": {"error_mm": [20.0, 1.0], "accuracy": [60.0, 3.0]}}}
    table = report.results_table(rows, "synthetic", 3)
    line = next(l for l in table.splitlines() if l.startswith("| Baseline, trained"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[1] == "12.00 ± 0.50" and cells[2] == "75.5 ± 1.0" and cells[3] == "4.5"
    assert cells[4] == "20.00 ± 1.00" and cells[6:] == ["10.87", "68.0"]
    assert "FPHA" in table.splitlines()[0] and "synthetic" in table.splitlines()[0]
    assert "Method #2" not in table  # rows that were not run are not shown


def test_summary_refuses_mixed_data_and_tags_every_row():
    base = {"data": "synthetic", "seeds": [0, 1], "rows": {"baseline": {"gt": {"error_mm": [12.0, 0.5], "accuracy": [70.0, 1.0]}}}}
    fpha = {**base, "data": "FPHA"}
    with pytest.raises(ResultsConflict, match="baseline.json against feedback.json: data: synthetic .*against FPHA"):
        report.table_rows({"baseline": base, "feedback": fpha})
    with pytest.raises(FileNotFoundError, match="02-04"):
        report.table_rows({})
    summary = report.summary_json({"baseline": base}, "cpu")
    assert summary["data"] == "synthetic" and all(r["data"] == "synthetic" for r in summary["rows"].values())
    assert summary["rows"]["baseline"]["original_fpha"] == {"error_mm": 10.87, "accuracy": 68.0}
    assert summary["software"]["torch"] != "absent"


def test_figures_readme_names_every_figure_the_notebooks_save():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "figures" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", readme, flags=re.M))
    saved = set()
    for nb in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        saved |= set(re.findall(r'savefig\(fig, "([a-z0-9_]+)"\)', code))
    assert saved and saved <= listed, sorted(saved - listed)


def _records(method, errors, accuracies, hpe_seconds=60.0, train_seconds=30.0):
    from handfuse.records import CentreScores, PretrainedScores, RunRecord

    return [RunRecord(method, seed, method != "untrained", "deepprior", "lstm", {},
                      CentreScores.of({"gt": {"error_mm": e, "accuracy": a}, "depth": {"error_mm": e + 5, "accuracy": a}}),
                      PretrainedScores(e, e, a, hpe_seconds, 6.0), train_seconds=train_seconds, epoch_seconds=10.0 + seed)
            for seed, (e, a) in enumerate(zip(errors, accuracies))]


def test_paired_reads_typed_records_as_it_reads_results_files():
    typed = _records("feedback", [10.0, 11.0, 12.0], [0.5, 0.6, 0.7])
    files = [r.to_json() for r in typed]
    base = _records("baseline", [11.0, 12.0, 13.1], [0.5, 0.6, 0.7])
    assert report.paired(typed, base, "error_mm") == report.paired(files, base, "error_mm")
    assert report.paired(typed, base, "error_mm", centre="depth")["verdict"] == "better"


def test_verdict_table_and_words_say_where_each_method_helps_and_hurts():
    runs = {"baseline": _records("baseline", [11.0, 12.0, 13.0], [0.5, 0.6, 0.7]),
            "better": _records("better", [10.0, 11.1, 12.0], [0.5, 0.6, 0.7]),
            "worse": _records("worse", [12.0, 13.0, 14.1], [0.5, 0.6, 0.7])}
    by_pair = {"A + B": report.verdicts(runs, list(runs)), "C + D": report.verdicts({**runs, "better": runs["worse"]}, list(runs))}
    table = report.verdict_table(by_pair, list(runs)).splitlines()
    assert table[0] == "| method | A + B | C + D |" and len(table) == 4  # no baseline row: it is the reference
    assert "(**better**)" in table[2].split("|")[2] and "(**worse**)" in table[2].split("|")[3]
    words = report.verdict_words(by_pair, list(runs), "synthetic", 3)
    assert "- **better**, pose error: helps for A + B; hurts for C + D;" in words
    assert "- **worse**, pose error: helps for no pair; hurts for A + B, C + D;" in words
    assert "(synthetic data, 3 seeds; 8 paired comparisons, each at 95 %, uncorrected" in words


def test_small_tables_carry_their_numbers():
    assert report.cost_table({"baseline": 2.0, "feedback": 3.0}).splitlines()[-1] == "| feedback | 3.0 | 1.50 |"
    rows = {"p = 1": {1.0: {"accuracy": [50.0, 1.0], "error_mm": [12.0, 0.5]}}}
    line = report.sweep_table([1.0], rows, {1.0: (58.1, 14.46)}).splitlines()[-1]
    assert line == "| 1.0 | 50.0 ± 1.0 / 12.00 ± 0.50 | 58.1% / 14.46 mm |"
    grid = {"untrained": _records("untrained", [10.0, 11.0], [0.5, 0.5], hpe_seconds=120.0),
            "baseline": _records("baseline", [10.0, 11.0], [0.5, 0.5], train_seconds=60.0)}
    assert report.row_minutes(grid, ["baseline"]) == {"pretraining": 2 * (120.0 + 6.0) / 60, "finetuning": 2.0}
    assert report.row_time_table({"x": grid}, ["baseline"]).splitlines()[-1] == "| x | 4.2 | 2.0 | 10.5 |"
    assert report.compare_centres("a", grid["baseline"], "b", grid["untrained"]).count("(depth centre)") == 2


def _file(records: dict, fingerprint: str = "abc") -> dict:
    return {"data": "synthetic", "seeds": [0, 1, 2], "rows": {}, "data_fingerprint": fingerprint,
            "records": {k: [r.to_json() for r in v] for k, v in records.items()}}


def test_the_summary_carries_every_paired_difference_and_refuses_mixed_data():
    base = _records("baseline", [11.0, 12.0, 13.0], [0.5, 0.6, 0.7])
    results = {"baseline": {**_file({"trained": base, "untrained": _records("untrained", [14.0, 15.1, 16.0], [0.4, 0.5, 0.6])}),
                            "rows": {"baseline": {"gt": {"error_mm": [12.0, 1.0], "accuracy": [60.0, 1.0]}}}},
               "ensemble": _file({"baseline": base, "feedback": _records("feedback", [10.0, 11.1, 12.0], [0.5, 0.6, 0.7])})}
    d = report.paired_differences(results)
    assert set(d) == {"baseline", "feedback"} and d["feedback"]["against"] == "baseline"
    assert d["feedback"]["gt"]["error_mm"]["verdict"] == "better" and d["feedback"]["gt"]["error_mm"]["seeds"] == 3
    assert d["baseline"]["depth"]["error_mm"]["diff"] == pytest.approx(-3.0333333, rel=1e-6)
    text = report.summary_markdown({"baseline": results["baseline"]}, "smoke")
    assert "## Paired differences" in text and "-3.03 ± " in text  # trained against untrained, with its interval
    assert report.summary_json(results, "smoke")["paired"]["feedback"]["gt"]["accuracy"]["verdict"] == "no difference"
    results["ensemble"]["data_fingerprint"] = "other"
    with pytest.raises(ResultsConflict, match=r"baseline.json against ensemble.json: data: synthetic \(fingerprint abc\) "
                                              r"against synthetic \(fingerprint other\)"):
        report.summary_markdown(results, "smoke")


def test_the_headroom_share_is_each_seeds_gain_over_its_headroom():
    """Seed by seed: headroom = the w_eq HPE's error - the oracle's; share = (baseline - method) / headroom."""
    def run(seed, error, start=None):
        return {"seed": seed, "test": {"gt": {"error_mm": error}}, "pretrained": {"hpe_film_error_mm": start}}

    base = [run(0, 14.0, 16.0), run(1, 14.2, 16.4), run(2, 13.8, 15.9)]
    method = [run(0, 13.0), run(1, 13.1), run(2, 12.9)]
    oracle = {"0": 14.0, "1": 14.4, "2": 13.9}  # as a results file gives it back: seeds as strings
    h = report.headroom(base, method, oracle)
    assert h["headroom_mm"][0] == pytest.approx(2.0) and h["headroom_mm"][1] == pytest.approx(0.0, abs=1e-9)
    assert h["share_pct"][0] == pytest.approx(50.0) and h["seeds"] == 3 and h["verdict"] == "recovers some"
    worse = report.headroom(base, [run(0, 14.5), run(1, 14.6), run(2, 14.4)], oracle)
    assert worse["share_pct"][0] == pytest.approx(-25.0) and worse["verdict"] == "loses ground"
    assert report.headroom(base, [run(0, 13.0), run(1, 14.5), run(2, 13.9)], oracle)["verdict"] == "nothing we can tell"
    with pytest.raises(ValueError, match="share no seed"):
        report.headroom(base, method, {"7": 14.0})
    results = {"feedback": {"data": "synthetic", "seeds": [0, 1, 2], "oracle_hpe": oracle, "rows": {},
                            "records": {"baseline": base, "feedback": method}, "untrained_sweep": {}, "trained_sweep": {}}}
    assert report.headroom_shares(results)["feedback"]["share_pct"][0] == pytest.approx(50.0)
    assert report.headroom_shares({"feedback": {**results["feedback"], "oracle_hpe": None}}) == {}


def test_the_best_remedy_is_chosen_on_validation_and_the_sweep_verdict_reads_the_intervals():
    remedies = {"feedback_scheduled": {"chosen": "a", "validation_error_mm": {"a": 14.1, "b": 13.0}},
                "feedback_late": {"chosen": "k", "validation_error_mm": {"k": 13.9}}}
    assert report.best_remedy({"remedies": remedies}) == "feedback_late"  # the chosen setting's score counts
    with pytest.raises(FileNotFoundError, match="run 03"):
        report.best_remedy({})
    text = report.coupling_verdict([0.0, 1.0], [[0.1, 0.3], [2.0, 0.5]],
                                   {"feedback": [[-5.0, 20.0], [10.0, 4.0]], "ensemble": [[0.0, 1.0], [-30.0, 10.0]]}, 3)
    assert "above zero at coupling 1: " in text and "**feedback** recovers a share above zero at coupling 1 (" in text
    assert "**ensemble** makes pose worse than the trained baseline at coupling 1 (" in text and "3 seeds" in text
    assert "feedback's 10.0 ± 4.0 % at coupling 1, about 0.20 mm of the 2.00 mm" in text
    # the largest mean share counts only if its interval is above zero: here feedback's 5 +- 9 does not
    mixed = report.coupling_verdict([0.0, 1.0], [[1.0, 0.2], [1.0, 0.2]],
                                    {"feedback": [[5.0, 9.0], [1.0, 2.0]], "noisy": [[2.0, 1.0], [3.0, 1.0]]}, 3)
    assert "noisy's 3.0 ± 1.0 % at coupling 1" in mixed and "does not pay" not in mixed
    nothing = report.coupling_verdict([0.0, 1.0], [[0.1, 0.3], [0.2, 0.3]], {"feedback": [[1.0, 2.0], [0.0, 1.0]]}, 3)
    assert "nowhere distinguishable from zero" in nothing and "recovers no share distinguishable" in nothing
    assert "fusion does not pay" in nothing


def test_the_lookalike_table_shows_the_articulation_reader_beside_the_study_recogniser():
    study = {"true": [0.5, 0.55, 0.45], "true_all": [0.8, 0.82, 0.84], "predicted": [0.5, 0.5, 0.5],
             "predicted_all": [0.7, 0.72, 0.74]}
    alone = report.lookalike_table(study, "synthetic", [0, 1, 2]).splitlines()
    both = report.lookalike_table({**study, "articulation": {**study, "true": [0.75, 0.8, 0.85]}}, "synthetic",
                                  [0, 1, 2]).splitlines()
    assert len(alone) == 2 + 2 and len(both) == 2 + 4
    reader_true = next(r for r in both if r.startswith("| the articulation reader") and "| true poses |" in r)
    assert "| 80.0 ± 12.4 |" in reader_true and "| 75, 80, 85 |" in reader_true
    assert all("the study's LSTM" in r for r in alone[2:])
