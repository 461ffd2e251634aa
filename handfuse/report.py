"""The study's results table, in the original's layout, and plain-words verdicts.

``ORIGINAL`` holds the 2019 slides' numbers.  They are **FPHA** numbers (1:1
action split, one run each, validation on the test set): they sit in their own,
labelled column and are never mixed with ours, which come from whatever data a
run used (synthetic by default) and carry a 95 % interval over seeds.
"""
from __future__ import annotations

import math

# key -> (label, original pose error mm or None, original accuracy % or None)
ROWS: dict[str, tuple[str, float | None, float | None]] = {
    "hpe": ("HPE standalone", 14.49, None),
    "har_gt": ("HAR standalone on ground-truth pose", None, 72.3),
    "har_gt_att": ("HAR + attention on ground-truth pose", None, None),
    "baseline_untrained": ("Baseline, untrained", 14.49, 59.0),
    "baseline": ("Baseline, trained", 10.87, 68.0),
    "feedback": ("Method #2, action feedback", 10.95, 68.2),
    "noisy_feedback": ("Noisy feedback (ours, the seed's future work)", None, None),
    "ensemble": ("Method #3, two-HPE ensemble", 10.72, 71.0),
    "ensemble_att": ("Method #3 + attention", 10.69, 71.3),
}
# the original's untrained p_eq sweep: p_eq -> (accuracy %, pose error mm), FPHA
ORIGINAL_P_EQ_SWEEP = {1.0: (58.1, 14.46), 0.9: (55.2, 14.63), 0.6: (53.4, 15.26), 0.35: (50.9, 15.60), 0.0: (39.4, 18.77)}


def fmt(pair, digits: int = 2) -> str:
    """[mean, half-width] -> 'mean ± hw' ('mean' alone for one seed, '-' for None)."""
    if pair is None:
        return "-"
    mean, hw = pair
    return f"{mean:.{digits}f}" if hw is None or math.isnan(hw) else f"{mean:.{digits}f} ± {hw:.{digits}f}"


def results_table(rows: dict[str, dict], source: str, seeds: int) -> str:
    """Markdown: one line per ``ROWS`` key present in ``rows``.  ``rows[key]`` maps a crop centre
    ("gt", "depth") to ``{"error_mm": [mean, hw] or None, "accuracy": [mean, hw] or None}``.
    The error gap is HAR-on-ground-truth accuracy minus the row's (same attention setting)."""
    gt_acc = {False: rows.get("har_gt", {}).get("gt", {}).get("accuracy"),
              True: rows.get("har_gt_att", {}).get("gt", {}).get("accuracy")}
    head = (f"| model | pose error (mm), {source} | accuracy (%), {source} | error gap (points) "
            f"| pose error (mm), depth centre | accuracy (%), depth centre "
            f"| original pose error (mm), FPHA | original accuracy (%), FPHA |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for key, (label, o_err, o_acc) in ROWS.items():
        if key not in rows:
            continue
        gt, depth = rows[key].get("gt", {}), rows[key].get("depth", {})
        reference = gt_acc[key.endswith("_att")]
        gap = "-"
        if key not in ("har_gt", "har_gt_att") and gt.get("accuracy") and reference:
            gap = f"{reference[0] - gt['accuracy'][0]:.1f}"
        lines.append(f"| {label} | {fmt(gt.get('error_mm'))} | {fmt(gt.get('accuracy'), 1)} | {gap} "
                     f"| {fmt(depth.get('error_mm'))} | {fmt(depth.get('accuracy'), 1)} "
                     f"| {'-' if o_err is None else o_err} | {'-' if o_acc is None else o_acc} |")
    note = (f"\n\nOurs: mean ± 95 % t-interval over {seeds} seed(s), {source} data, crops centred on the ground-truth "
            "hand centre unless the column says depth centre.  Original: FPHA, single runs, from the 2019 slides; "
            "not comparable as numbers.")
    return head + "\n".join(lines) + note


def compare(name_a: str, a, name_b: str, b, unit: str, higher_is_better: bool) -> str:
    """A plain sentence saying whether ``a`` beats ``b`` ([mean, half-width] each), given their intervals."""
    (ma, ha), (mb, hb) = a, b
    better = ma > mb if higher_is_better else ma < mb
    diff = abs(ma - mb)
    widths = [h for h in (ha, hb) if h is not None and not math.isnan(h)]
    if len(widths) < 2:
        return (f"{name_a} ({ma:.2f} {unit}) is {'better' if better else 'not better'} than {name_b} ({mb:.2f} {unit}) "
                "in this single run; one seed cannot say whether that is more than noise.")
    clear = diff > math.hypot(*widths)  # a rough test: the difference exceeds the combined interval
    verdict = ("better than" if better else "worse than") if clear else "not distinguishable from"
    return (f"{name_a} ({ma:.2f} ± {ha:.2f} {unit}) is {verdict} {name_b} ({mb:.2f} ± {hb:.2f} {unit})"
            f"{'' if clear else ': the difference is within the seeds’ spread'}.")
