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
    "hpe": ("HPE standalone (pre-trained with FiLM fed w_eq)", 14.49, None),
    "hpe_oracle": ("HPE fed the true action (oracle, pre-trained and scored on it)", None, None),
    "har_gt": ("HAR standalone on ground-truth pose", None, 72.3),
    "har_gt_att": ("HAR + attention on ground-truth pose", None, None),
    "baseline_untrained": ("Baseline, untrained", 14.49, 59.0),
    "baseline": ("Baseline, trained", 10.87, 68.0),
    "baseline_pose_only": ("Baseline, fine-tuned on pose only (control: w_nll = 0, HAR frozen)", None, None),
    "feedback": ("Method #2, action feedback", 10.95, 68.2),
    "feedback_oracle": ("Method #2 fed the true action at test (its oracle)", None, None),
    "feedback_scheduled": ("Feedback + scheduled sampling (ours)", None, None),
    "feedback_curriculum": ("Feedback from a curriculum-pre-trained HPE (ours)", None, None),
    "feedback_late": ("Feedback with a late action (ours)", None, None),
    "noisy_feedback": ("Noisy feedback (ours, the seed's future work)", None, None),
    "ensemble": ("Method #3, two-HPE ensemble", 10.72, 71.0),
    "ensemble_att": ("Method #3 + attention", 10.69, 71.3),
}
def best_remedy(feedback_results: dict) -> str:
    """The remedy of ``03``'s results whose chosen setting scored the lowest validation pose error
    (its ``remedies``: row -> chosen label and the validation error of every candidate)."""
    remedies = feedback_results.get("remedies") or {}
    if not remedies:
        raise FileNotFoundError("03's results hold no remedies: run 03 (with its remedies) into the same out first")
    return min(remedies, key=lambda row: remedies[row]["validation_error_mm"][remedies[row]["chosen"]])


def _when_summary(when: dict | None) -> dict:
    """``08``'s results file for ``summary.json``: everything but the per-method rows, with the verdict
    read again from the numbers (:func:`coupling_verdict`)."""
    if not when:
        return {}
    return {**{k: v for k, v in when.items() if k != "rows"},
            "verdict": coupling_verdict(when["couplings"], when["headroom_mm"], when["share_pct"], len(when["seeds"]))}


def coupling_table(when: dict) -> str:
    """``08``'s results file as Markdown: per coupling, the headroom (mm) and each method's recovered
    share (%), mean ± 95 % half-width over seeds."""
    methods = when["methods"]
    label = {m: ROWS[m][0] if m in ROWS else m for m in methods}
    rows = [[c, f"{h[0]:.2f} ± {h[1]:.2f}"] + [f"{when['share_pct'][m][i][0]:+.1f} ± {when['share_pct'][m][i][1]:.1f}"
                                                for m in methods]
            for i, (c, h) in enumerate(zip(when["couplings"], when["headroom_mm"]))]
    return table(["coupling", "headroom (mm)"] + [f"{label[m]}: share (%)" for m in methods], rows)


def coupling_verdict(values: list[float], headroom: list, shares: dict[str, list], seeds: int) -> str:
    """``08``'s answer in plain words: where the headroom is distinguishable from zero, where each
    method recovers a share of it or loses ground, and the most any method recovers, in mm
    (95 % intervals over ``seeds`` seeds, uncorrected)."""
    def at(points, test) -> list[str]:
        return [f"{v:g}" for v, p in zip(values, points) if test(p)]

    above = at(headroom, lambda p: p[0] - p[1] > 0)
    lines = ["- **The headroom** (what knowing the action is worth to a pre-trained pose estimator) is "
             + (f"above zero at coupling {', '.join(above)}" if above else "nowhere distinguishable from zero")
             + f": {', '.join(f'{fmt(p)} mm at {v:g}' for v, p in zip(values, headroom))}."]
    for name, points in shares.items():
        gains, losses = at(points, lambda p: p[0] - p[1] > 0), at(points, lambda p: p[0] + p[1] < 0)
        said = ([f"recovers a share above zero at coupling {', '.join(gains)}"] if gains else []) + \
            ([f"makes pose worse than the trained baseline at coupling {', '.join(losses)}"] if losses else [])
        lines.append(f"- **{name}** " + (" and ".join(said) if said else "recovers no share distinguishable from zero")
                     + f" ({', '.join(f'{fmt(p, 1)} % at {v:g}' for v, p in zip(values, points))}).")
    gains = [(n, i) for n, pts in shares.items() for i, p in enumerate(pts) if p[0] - p[1] > 0]  # interval above zero
    if not gains:
        lines.append("- **So:** no method recovers a share distinguishable from zero at any coupling: on these "
                     "benchmarks fusion does not pay, however much the action says about the pose.")
    else:
        name, i = max(gains, key=lambda k: shares[k[0]][k[1]][0])
        best, room = shares[name][i], headroom[i]
        lines.append(f"- **So:** the most any method recovers (of the shares whose interval is above zero) is {name}'s "
                     f"{fmt(best, 1)} % at coupling {values[i]:g}, "
                     f"about {best[0] * room[0] / 100:.2f} mm of the {room[0]:.2f} mm there"
                     + (": under a quarter of the headroom, so the action is worth more than these methods take."
                        if best[0] < 25 else "."))
    return (f"**In plain words** (synthetic data, {seeds} seeds, 95 % intervals, uncorrected for "
            f"{len(values) * (len(shares) + 1)} comparisons):\n" + "\n".join(lines))


# the remedies for exposure bias that 03 fine-tunes, each a feedback variant chosen on validation
REMEDIES = ("feedback_scheduled", "feedback_curriculum", "feedback_late")
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


def _seed_score(run, metric: str, centre: str) -> tuple[int, float]:
    """(seed, score) of a run record, or of its results-file dict."""
    if isinstance(run, dict):
        return run["seed"], run["test"][centre][metric]
    return run.seed, getattr(run.test[centre], metric)


def paired(runs_a: list, runs_b: list, metric: str, centre: str = "gt") -> dict:
    """Is ``a`` better than ``b`` on ``metric`` ("accuracy" or "error_mm")?  Runs of the same seed start
    from the same pre-trained models, so the test is *paired*: the 95 % t-interval of the per-seed
    differences.  ``runs_a`` and ``runs_b`` are run records (or their results-file dicts).  Returns
    ``mean_a``, ``mean_b``, ``diff`` (a - b; accuracy in points), ``hw`` (its half-width), ``seeds``
    and ``verdict``: "better" or "worse" only when the interval excludes zero, else "no difference"
    ("one seed" when there is nothing to pair)."""
    from .metrics import mean_ci95

    scale, higher = (100.0, True) if metric == "accuracy" else (1.0, False)
    by_seed = {seed: scale * v for seed, v in (_seed_score(r, metric, centre) for r in runs_b)}
    pairs = [(scale * v, by_seed[seed]) for seed, v in (_seed_score(r, metric, centre) for r in runs_a) if seed in by_seed]
    if not pairs:
        raise ValueError("the two sets of runs share no seed: nothing to compare")
    mean_a, mean_b = (sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    diff, hw = mean_ci95([a - b for a, b in pairs])
    if len(pairs) < 2 or math.isnan(hw):
        verdict = "one seed"
    elif abs(diff) <= hw:
        verdict = "no difference"
    else:
        verdict = "better" if (diff > 0) == higher else "worse"
    return {"mean_a": mean_a, "mean_b": mean_b, "diff": diff, "hw": hw, "seeds": len(pairs), "verdict": verdict}


def compare(name_a: str, runs_a: list, name_b: str, runs_b: list, metric: str, centre: str = "gt") -> str:
    """A plain sentence: is ``a`` better than ``b`` on ``metric``?  (:func:`paired` says how it is decided.)"""
    p = paired(runs_a, runs_b, metric, centre)
    unit, what = ("points", "accuracy") if metric == "accuracy" else ("mm", "pose error")
    head = f"{name_a}'s {what} ({p['mean_a']:.2f}) against {name_b}'s ({p['mean_b']:.2f}): {p['diff']:+.2f} {unit}"
    if p["verdict"] == "one seed":
        return head + " in a single seed, which cannot tell a difference from noise."
    if p["verdict"] == "no difference":
        return head + f" ± {p['hw']:.2f} over {p['seeds']} paired seeds, **not distinguishable from zero**."
    return head + f" ± {p['hw']:.2f} over {p['seeds']} paired seeds: **{p['verdict']}**."


def compare_all(name_a: str, runs_a: list, name_b: str, runs_b: list, centres=("gt",)) -> str:
    """**In plain words.** :func:`compare` on accuracy and pose error, for each of ``centres``."""
    return "**In plain words.** " + " ".join(compare(name_a, runs_a, name_b, runs_b, m, c)
                                             for c in centres for m in ("accuracy", "error_mm"))


def compare_centres(name_a: str, runs_a: list, name_b: str, runs_b: list, centres=("gt", "depth")) -> str:
    """:func:`compare_all` over ``centres``, each sentence naming its centre: ``"<name_a> (gt centre)'s ..."``."""
    return "**In plain words.** " + " ".join(compare(f"{name_a} ({c} centre)", runs_a, name_b, runs_b, m, c)
                                             for c in centres for m in ("accuracy", "error_mm"))


# ----------------------------------------------------------------------------- small tables the notebooks show


def table(head: list[str], rows: list[list]) -> str:
    """A Markdown table: a header and rows of cells (each cell written with ``str``)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def counts_table(counts: dict, source: str) -> str:
    """The dataset's counts (``handfuse.datastats.summary``) as one row."""
    return table([""] + list(counts), [[source] + list(counts.values())])


def standalone_table(results: dict, source: str, seed: int) -> str:
    """``01``'s table: ours (one seed) beside the original's FPHA numbers, which come from :data:`ROWS`
    (the one definition every table and slide reads).  ``results`` maps ``hpe``, ``hpe_film``, ``har``
    and ``har_att`` (and, optionally, ``hpe_oracle``) to fit results."""
    rows = [("HPE standalone (mm)", results["hpe"].test["error_mm"], ROWS["hpe"][1]),
            ("HPE + FiLM fed w_eq (mm)", results["hpe_film"].test["error_mm"], None),
            *([("HPE + FiLM fed the true action, oracle (mm)", results["hpe_oracle"].test["error_mm"], None)]
              if "hpe_oracle" in results else []),
            ("HAR on true pose (%)", 100 * results["har"].test["accuracy"], ROWS["har_gt"][2]),
            ("HAR + attention on true pose (%)", 100 * results["har_att"].test["accuracy"], ROWS["har_gt_att"][2])]
    return table(["model", f"ours ({source}, seed {seed})", "original (FPHA, 2019)"],
                 [[name, f"{v:.2f}", "-" if o is None else o] for name, v, o in rows])


def lookalike_table(found: dict, source: str, seeds: list[int]) -> str:
    """``01``'s look-alike pairs (:func:`handfuse.standalone.lookalike_accuracy`): per recogniser and
    input, the within-pair accuracy and the accuracy over all 45 classes, mean ± 95 % half-width over
    ``seeds``.  ``found`` holds the study's recogniser's scores, and under ``"articulation"`` those of
    the articulation reader (the same LSTM on the hand's joint angles), when ``01`` trained one."""
    from .metrics import mean_ci95

    inputs = {"true": "true poses", "predicted": f"the FiLM HPE's predictions, fed w_eq (seed {seeds[0]})"}
    readers = {"the study's LSTM (camera frame)": found,
               "the articulation reader (the LSTM on joint angles)": found.get("articulation", {})}
    rows = [[reader, inputs[k], fmt([100 * v for v in mean_ci95(scores[k])], 1),
             ", ".join(f"{100 * v:.0f}" for v in scores[k]), fmt([100 * v for v in mean_ci95(scores[f"{k}_all"])], 1)]
            for reader, scores in readers.items() for k in inputs if k in scores]
    return table([f"recogniser ({source}, seeds {', '.join(map(str, seeds))})", "reads", "within-pair accuracy (%)",
                  "per seed", "accuracy, all 45 classes (%)"], rows)


def oracle_table(film, oracle, source: str, seed: int) -> str:
    """``01``'s headroom of one seed: the conditioned HPE pre-trained on w_eq, scored fed w_eq and fed
    the true action, beside the oracle pre-trained and scored on the true action (fit results)."""
    rows = [("FiLM HPE pre-trained on w_eq, fed w_eq (every method's start)", film.test["error_mm"]),
            ("the same weights fed the true action at test", film.test["error_mm_true_action"]),
            ("FiLM HPE pre-trained and scored on the true action (oracle)", oracle.test["error_mm"])]
    gap = film.test["error_mm"] - oracle.test["error_mm"]
    return (table(["pose estimator", f"test error, mm ({source}, seed {seed})"], [[n, f"{v:.2f}"] for n, v in rows])
            + f"\n\nHeadroom, seed {seed}: {gap:.2f} mm ({100 * gap / film.test['error_mm']:.0f} % of the error)."
            " One seed: `03` gives it with an interval over seeds.")


def two_rows_table(rows: dict[str, dict], centre: str = "gt") -> str:
    """Pose error and accuracy (mean ± 95 % half-width) of a few labelled rows (``aggregate`` rows)."""
    return table(["fine-tuning", "pose error (mm)", "accuracy (%)"],
                 [[label, fmt(row[centre]["error_mm"]), fmt(row[centre]["accuracy"], 1)] for label, row in rows.items()])


def sweep_table(values: list, curves: dict[str, dict], original: dict | None = None) -> str:
    """A p_eq sweep: per value, accuracy (%) / error (mm) of each labelled curve (``{label: {value: row}}``,
    rows as ``aggregate``'s for one centre), and the original's FPHA numbers where it has them."""
    head = ["p_eq"] + [f"{label}: accuracy (%) / error (mm)" for label in curves] + (["original (FPHA)"] if original else [])
    rows = []
    for v in values:
        row = [v] + [f"{fmt(c[v]['accuracy'], 1)} / {fmt(c[v]['error_mm'])}" for c in curves.values()]
        if original:
            row.append(f"{original[v][0]}% / {original[v][1]:.2f} mm" if v in original else "-")
        rows.append(row)
    return table(head, rows)


def cost_table(seconds: dict[str, float], reference: str = "baseline") -> str:
    """Fine-tuning seconds per epoch of each labelled run, and their ratio to ``reference``'s."""
    return table(["fine-tuning", "s / epoch", f"x {reference}"],
                 [[k, f"{v:.1f}", f"{v / seconds[reference]:.2f}"] for k, v in seconds.items()])


def model_cost_table(cost: list[tuple[str, int, str]]) -> str:
    """Parameters and forward FLOPs of labelled models: ``cost`` holds ``(label, parameters, FLOPs as text)``."""
    return table(["model", "parameters", "forward FLOPs"], [[label, f"{n:,}", flops] for label, n, flops in cost])


def row_minutes(records: dict[str, list], methods: list[str]) -> dict[str, float]:
    """One-thread minutes of a grid row (one pair of models): ``pretraining``, summed over the untrained
    chain's records (one per seed; each carries its pre-trained models' seconds), and ``finetuning``,
    summed over the seeds of ``methods``.  ``records`` maps ``"untrained"`` and each method to its records."""
    pretraining = sum(r.pretrained.hpe_seconds + r.pretrained.har_seconds for r in records["untrained"])
    return {"pretraining": pretraining / 60, "finetuning": sum(r.train_seconds for m in methods for r in records[m]) / 60}


def row_time_table(rows: dict[str, dict[str, list]], methods: list[str]) -> str:
    """Per labelled grid row (``{label: records}``, as :func:`row_minutes` takes them): its one-thread
    minutes and the trained baseline's median fine-tuning seconds per epoch over the seeds."""
    from statistics import median

    lines = []
    for label, records in rows.items():
        minutes = row_minutes(records, methods)
        lines.append([label, f"{minutes['pretraining']:.1f}", f"{minutes['finetuning']:.1f}",
                      f"{median(r.epoch_seconds for r in records['baseline']):.1f}"])
    return table(["pair", "pre-training (min)", "fine-tuning (min)", "fine-tuning s / epoch (baseline, median)"], lines)


def scores_table(scores: dict[str, dict]) -> str:
    """Pose error (mm) and accuracy (%) of labelled outputs (``{label: {"error_mm", "accuracy" 0-1}}``)."""
    return table(["output", "pose error (mm)", "accuracy (%)"],
                 [[k, f"{v['error_mm']:.2f}", f"{100 * v['accuracy']:.1f}"] for k, v in scores.items()])


def verdicts(runs: dict, methods: list[str], reference: str = "baseline") -> dict[tuple[str, str], dict]:
    """:func:`paired` of every method against ``reference`` on accuracy and pose error:
    ``{(method, metric): result}``; ``runs`` maps a method name to its records."""
    return {(name, metric): paired(runs[name], runs[reference], metric)
            for name in methods if name != reference for metric in ("accuracy", "error_mm")}


def verdict_table(by_column: dict[str, dict], methods: list[str], reference: str = "baseline") -> str:
    """One row per method, one column per label of ``by_column`` (``{label: verdicts(...)}``): the paired
    difference against ``reference`` with its interval and verdict, for accuracy and pose error."""
    def cell(v: dict) -> str:
        acc, err = v["accuracy"], v["error_mm"]
        return (f"accuracy {acc['diff']:+.1f} ± {acc['hw']:.1f} pts (**{acc['verdict']}**); "
                f"error {err['diff']:+.2f} ± {err['hw']:.2f} mm (**{err['verdict']}**)")
    rows = [[name] + [cell({m: v[(name, m)] for m in ("accuracy", "error_mm")}) for v in by_column.values()]
            for name in methods if name != reference]
    return table(["method"] + list(by_column), rows)


def verdict_words(by_column: dict[str, dict], methods: list[str], source: str, seeds: int,
                  reference: str = "baseline") -> str:
    """The verdicts of :func:`verdict_table` in plain words: where each method helps, hurts, or cannot be told apart."""
    words = []
    for name in [m for m in methods if m != reference]:
        for metric, what in (("accuracy", "action accuracy"), ("error_mm", "pose error")):
            helps = [c for c, v in by_column.items() if v[(name, metric)]["verdict"] == "better"]
            hurts = [c for c, v in by_column.items() if v[(name, metric)]["verdict"] == "worse"]
            rest = len(by_column) - len(helps) - len(hurts)
            words.append(f"- **{name}**, {what}: helps for {', '.join(helps) or 'no pair'}; hurts for "
                         f"{', '.join(hurts) or 'no pair'}; no difference we can tell from the seeds for the "
                         f"other{'s' if rest != 1 else ''}.")
    n = sum(1 for v in by_column.values() for (name, _) in v if name != reference)
    return (f"**In plain words** ({source} data, {seeds} seeds; {n} paired comparisons, each at 95 %, "
            "uncorrected for multiple comparisons, so about one in twenty could cross zero by chance):\n"
            + "\n".join(words))


# ----------------------------------------------------------------------------- the headroom: could action help?


def _pretrained_film_error(run) -> tuple[int, float]:
    """(seed, test error of the w_eq-fed conditioned HPE the run started from) of a record or its dict."""
    if isinstance(run, dict):
        return run["seed"], run["pretrained"]["hpe_film_error_mm"]
    return run.seed, run.pretrained.hpe_film_error_mm


def headroom(baseline: list, method: list, oracle: dict, centre: str = "gt") -> dict:
    """How much of the action's headroom ``method`` recovers, paired by seed (records or their dicts).

    The headroom of seed s is what knowing the action is worth to a pre-trained pose estimator: the
    test error of the conditioned HPE pre-trained on w_eq (the one every method starts from) minus
    that of the one pre-trained and scored on the true action (``oracle[s]``, mm).  The method's gain
    is the trained baseline's error minus the method's.  Returns ``headroom_mm`` and ``share_pct``
    (gain / headroom, in %), each [mean, 95 % t half-width] over the seeds all three share, the
    ``seeds`` and a ``verdict``: "recovers some" or "loses ground" only where the share's interval
    excludes zero, else "nothing we can tell"."""
    from .metrics import mean_ci95

    oracle = {int(k): float(v) for k, v in oracle.items()}
    start = dict(_pretrained_film_error(r) for r in baseline)
    base = dict(_seed_score(r, "error_mm", centre) for r in baseline)
    got = dict(_seed_score(r, "error_mm", centre) for r in method)
    seeds = sorted(set(start) & set(got) & set(oracle))
    if not seeds:
        raise ValueError("the baseline, the method and the oracle share no seed: nothing to compare")
    room = [start[s] - oracle[s] for s in seeds]
    share = [100.0 * (base[s] - got[s]) / r for s, r in zip(seeds, room)]
    mean, hw = mean_ci95(share)
    verdict = ("one seed" if len(seeds) < 2 else "nothing we can tell" if abs(mean) <= hw
               else "recovers some" if mean > 0 else "loses ground")
    return {"headroom_mm": list(mean_ci95(room)), "share_pct": [mean, hw], "seeds": len(seeds), "verdict": verdict}


def headroom_table(shares: dict[str, dict]) -> str:
    """:func:`headroom` of several methods as Markdown: the headroom and each method's share of it."""
    return table(["method", "headroom (mm, oracle HPE against the w_eq one)", "share recovered (%)", "seeds", "verdict"],
                 [[ROWS[name][0] if name in ROWS else name, fmt(h["headroom_mm"]), fmt(h["share_pct"], 1), h["seeds"],
                   h["verdict"]] for name, h in shares.items()])


# the methods whose share of the headroom the summary reports: (row, the file and group of its records)
HEADROOM = (("feedback", ("ensemble", "feedback")), ("feedback", ("feedback", "feedback")),
            ("feedback_oracle", ("feedback", "feedback_oracle")),
            *((row, ("feedback", row)) for row in REMEDIES),
            ("noisy_feedback", ("ensemble", "noisy_feedback")), ("ensemble", ("ensemble", "ensemble")))


def choose_on_validation(runs: dict, metric: str = "error_mm") -> tuple[object, str]:
    """The key of ``runs`` (key -> run records; the first seed's is read) whose selected epoch scored
    best on the **validation** split on ``metric`` (lowest error or loss, highest accuracy), and a
    Markdown table of every candidate's validation score.  Test scores are never read."""
    scores = {key: records[0].val[metric] for key, records in runs.items()}
    best = (max if metric == "accuracy" else min)(scores, key=scores.get)
    unit = "%" if metric == "accuracy" else "mm" if metric == "error_mm" else ""
    scale = 100.0 if metric == "accuracy" else 1.0
    rows = [[str(k), f"{scale * v:.3f}", "**chosen**" if k == best else ""] for k, v in scores.items()]
    return best, table(["candidate", f"validation {metric} ({unit}), seed {runs[best][0].seed}", ""], rows)


def headroom_shares(results: dict[str, dict]) -> dict[str, dict]:
    """Every method's :func:`headroom` share, against the trained baseline of the same file, with the
    oracle HPE's test errors that ``03`` records (``feedback.json``'s ``oracle_hpe``).  Empty when
    ``03`` was not run."""
    oracle = results.get("feedback", {}).get("oracle_hpe")
    out = {}
    for row, (file, group) in HEADROOM if oracle else ():
        records = results.get(file, {}).get("records", {})
        if row not in out and records.get(group) and records.get("baseline"):
            out[row] = headroom(records["baseline"], records[group], oracle)
    return out


# ----------------------------------------------------------------------------- the summary of a whole run


def open_results(preset: str, out: str | None = None) -> tuple[str, "Path", dict[str, dict]]:
    """``05``'s set-up: the preset it summarises (its parameter, unless the test suite forces one
    through ``HANDFUSE_PRESET``), the results folder ``<out>/results`` (``runs/<preset>/results`` when
    ``out`` is None) and its results files, refused when they come from different runs
    (:func:`handfuse.results.check_one_run`).  Figures of this summary go to ``<out>/figures`` when
    ``out`` is given or the data is not the synthetic benchmark.  No data is opened."""
    from .config import notebook_preset
    from .errors import check
    from .paths import use_run_figures
    from .results import check_one_run, load_results, results_dir

    preset = notebook_preset(preset)
    check(out is None or (isinstance(out, str) and out != ""), "out", out, "the folder a run wrote (a path), or None for runs/<preset>")
    folder = results_dir(preset, out)
    results = load_results(folder)
    if not results:
        raise FileNotFoundError(f"{folder}: no results files; run notebooks 01-04 with out={out!r} first")
    check_one_run(results)
    sources = {r.get("data") for r in results.values()}
    use_run_figures(folder.parent / "figures" if out is not None or sources != {"synthetic"} else None)
    print(f"results files in {folder}: {sorted(results)}")
    return preset, folder, results


def parameters_table(results: dict[str, dict]) -> str:
    """The parameters of the run the results files come from, one row each, with the files that
    record it (every notebook records the parameters it was run with)."""
    from .results import shared_parameters

    everyone = set(results)
    return table(["parameter", "value", "recorded by"],
                 [[f"`{k}`", f"`{v!r}`", "every file" if set(files) == everyone else ", ".join(f"{f}.json" for f in files)]
                  for k, (v, files) in shared_parameters(results).items()])


def machine_info() -> dict:
    """The CPU model, the widest vector ISA torch uses on it, cores, torch version and threads.  CPU
    results are deterministic per machine, but oneDNN picks its kernels by CPU, so two CPU models can
    round differently and train to slightly different numbers; timings depend on it too."""
    import os
    import platform
    from pathlib import Path

    import torch

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        pass
    return {"cpu": model, "isa": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def software_versions() -> dict[str, str]:
    import platform
    import subprocess
    from importlib.metadata import version
    from pathlib import Path

    m = machine_info()
    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": m["cpu"], "isa": m["isa"]}
    for pkg in ("torch", "numpy", "matplotlib", "papermill", "nbval", "ipywidgets", "plotly"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # not installed
            out[pkg] = "absent"
    try:
        out["handfuse_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:  # not a git checkout
        out["handfuse_commit"] = "unknown"
    return out


def table_rows(results: dict[str, dict]) -> tuple[dict, str, int]:
    """The study's rows gathered from the method notebooks' results (later notebooks win), with the
    data source and the number of seeds.  Refuses (:func:`handfuse.results.check_one_run`) results
    files from different runs: other data, or another value of a parameter they share."""
    from .results import check_one_run

    check_one_run(results)
    rows, seeds = {}, set()
    for name in ("baseline", "feedback", "ensemble"):
        if name in results:
            rows.update(results[name]["rows"])
            seeds.add(len(results[name]["seeds"]))
    if not rows:
        raise FileNotFoundError("no method results (baseline.json, feedback.json, ensemble.json): run notebooks 02-04 first")
    return rows, next(r["data"] for n, r in results.items() if n in ("baseline", "feedback", "ensemble")), min(seeds)


# (row, its records, the reference row, the reference's records): where each results file keeps them;
# a row found in two files is taken from the first (04's feedback, else 03's)
PAIRED = (("baseline", ("baseline", "trained"), "baseline_untrained", ("baseline", "untrained")),
          ("baseline_pose_only", ("baseline", "pose_only"), "baseline", ("baseline", "trained")),
          ("feedback", ("ensemble", "feedback"), "baseline", ("ensemble", "baseline")),
          ("feedback", ("feedback", "feedback"), "baseline", ("feedback", "baseline")),
          *((row, ("feedback", row), "baseline", ("feedback", "baseline")) for row in REMEDIES),
          ("noisy_feedback", ("ensemble", "noisy_feedback"), "baseline", ("ensemble", "baseline")),
          ("ensemble", ("ensemble", "ensemble"), "baseline", ("ensemble", "baseline")),
          ("ensemble_att", ("ensemble", "ensemble_att"), "baseline_att", ("ensemble", "baseline_att")))


def paired_differences(results: dict[str, dict]) -> dict[str, dict]:
    """Every row's paired difference against its reference (the trained baseline with the same
    attention setting; the untrained chain for the trained baseline): per row, the reference's name
    and, per centre and metric, :func:`paired`'s mean, 95 % half-width, seed count and verdict.  Rows
    whose records are not in ``results`` are left out."""
    out = {}
    for row, (file, group), ref, (ref_file, ref_group) in PAIRED:
        runs = results.get(file, {}).get("records", {}).get(group)
        base = results.get(ref_file, {}).get("records", {}).get(ref_group)
        if not runs or not base or row in out:
            continue
        out[row] = {"against": ref, **{c: {m: paired(runs, base, m, c) for m in ("accuracy", "error_mm")}
                                       for c in runs[0]["test"] if c in base[0]["test"]}}
    return out


def paired_table(differences: dict[str, dict]) -> str:
    """:func:`paired_differences` as Markdown: difference ± 95 % half-width (verdict), per centre."""
    def cell(p: dict, unit: str) -> str:
        return f"{p['diff']:+.2f} ± {p['hw']:.2f} {unit} ({p['verdict']})"
    label = {**{k: v[0] for k, v in ROWS.items()}, "baseline_att": "Baseline + attention, trained"}
    rows = [[label[row], label[d["against"]], d["gt"]["accuracy"]["seeds"]]
            + [cell(d[c][m], "pts" if m == "accuracy" else "mm") if c in d else "-"
               for c in ("gt", "depth") for m in ("accuracy", "error_mm")] for row, d in differences.items()]
    return table(["row", "against", "seeds", "accuracy", "pose error", "accuracy, depth centre",
                  "pose error, depth centre"], rows)


# the rows each method notebook's results file holds (05 checks that the summary has them)
NOTEBOOK_ROWS = {"baseline": ("hpe", "har_gt", "baseline_untrained", "baseline", "baseline_pose_only"),
                 "feedback": ("hpe", "hpe_oracle", "har_gt", "baseline", "feedback", "feedback_oracle"),
                 "ensemble": ("hpe", "har_gt", "baseline_untrained", "baseline", "feedback", "noisy_feedback", "ensemble",
                              "ensemble_att")}


def expected_rows(results: dict[str, dict]) -> set[str]:
    """The rows a summary of ``results`` must hold: those of every method notebook that was run, and
    the remedies ``03`` ran."""
    rows = {row for name in NOTEBOOK_ROWS if name in results for row in NOTEBOOK_ROWS[name]}
    return rows | set(results.get("feedback", {}).get("remedies", {}))


def fingerprint(results: dict[str, dict]) -> str | None:
    """The data fingerprint the results files share (None when none records one)."""
    return next((r["data_fingerprint"] for r in results.values() if r.get("data_fingerprint") and not r.get("own_data")),
                None)


def summary_markdown(results: dict[str, dict], preset: str) -> str:
    """The whole run in Markdown: the table, the error gap, the p_eq sweeps, eta/zeta, noisy feedback.
    Every section names its data source."""
    rows, source, seeds = table_rows(results)
    tag = f"[{source}]"
    missing = [f"`{n}.json`" for n in NOTEBOOK_ROWS if n not in results]
    lines = [f"# handfuse results, preset `{preset}` {tag}", "",
             f"All numbers below come from **{source}**" + (" data" if source in ("synthetic", "FPHA") else "")
             + (" (not FPHA)." if source != "FPHA" else "."),
             "The original's columns are FPHA numbers from the 2019 slides.", "",
             "## The run", "", f"Results files: {', '.join(f'`{n}.json`' for n in sorted(results))}"
             + (f"; not run: {', '.join(missing)}" if missing else "")
             + f". Data fingerprint `{fingerprint(results)}`. Their parameters:", "", parameters_table(results), "",
             "## The table " + tag, "",
             results_table(rows, source, seeds), "", "## The error gap " + tag, ""]
    for att, ref_key in ((False, "har_gt"), (True, "har_gt_att")):
        ref = rows.get(ref_key, {}).get("gt", {}).get("accuracy")
        for key in ROWS:
            if ref is None or key.endswith("_att") != att or key.startswith(("har", "hpe")) or key not in rows:
                continue
            acc = rows[key]["gt"]["accuracy"]
            lines.append(f"- {tag} {ROWS[key][0]}: {ref[0] - acc[0]:.1f} points below the HAR on ground-truth pose"
                         f" ({fmt(acc, 1)} % against {fmt(ref, 1)} %)")
    look = results.get("standalone", {}).get("lookalike")
    if look:
        lines += ["", "## The look-alike pairs " + tag, "",
                  "Within-pair accuracy on the four pairs that only a 10-20 mm finger articulation tells apart "
                  "(chance 50 %), from `01`: the study's recogniser, and the same LSTM reading the hand's joint angles:",
                  "", lookalike_table({k: v for k, v in look.items() if k != "seeds"}, source, look["seeds"])]
    fb = results.get("feedback")
    if fb:
        lines += ["", "## The untrained p_eq sweep " + tag, "", "| p_eq | " + " | ".join(fb["untrained_sweep"]) +
                  " | original (FPHA) |", "|---|" + "---|" * (len(fb["untrained_sweep"]) + 1)]
        for p in next(iter(fb["untrained_sweep"].values())):
            cells = [f"{fmt(v[p]['accuracy'], 1)} % / {fmt(v[p]['error_mm'])} mm" for v in fb["untrained_sweep"].values()]
            orig = ORIGINAL_P_EQ_SWEEP.get(float(p))
            lines.append(f"| {p} | " + " | ".join(cells) + f" | {'-' if orig is None else f'{orig[0]} % / {orig[1]} mm'} |")
        lines += ["", f"## The trained p_eq sweep {tag} (one seed)", "", "| p_eq | accuracy (%) | pose error (mm) | s / epoch |",
                  "|---|---|---|---|"]
        for p, r in fb["trained_sweep"].items():
            lines.append(f"| {p} | {100 * r['test']['gt']['accuracy']:.1f} | {r['test']['gt']['error_mm']:.2f} | "
                         f"{r['epoch_seconds']:.1f} |")
    shares = headroom_shares(results)
    if shares:
        lines += ["", "## Could action help pose? The headroom " + tag, "",
                  "The headroom is what knowing the action is worth to the pre-trained pose estimator: the HPE "
                  "pre-trained and scored on the true action against the one every method starts from. Each "
                  "method's share is its gain over the trained baseline divided by that, paired by seed "
                  "(mean ± 95 % t-interval).", "", headroom_table(shares)]
    when = results.get("when_fusion_helps")
    if when:
        lines += ["", "## When does fusion pay? (`08`, benchmarks of its own) [synthetic]", "",
                  f"`08` varies the generator's `action_pose_coupling` on {when['parameters'].get('subjects')}-subject "
                  "benchmarks of its own (so these numbers are not the table's): the headroom at each coupling and "
                  "the share of it each method recovers.", "", coupling_table(when), "",
                  coupling_verdict(when["couplings"], when["headroom_mm"], when["share_pct"], len(when["seeds"]))]
    differences = paired_differences(results)
    if differences:
        lines += ["", "## Paired differences " + tag, "",
                  "Each row against its reference, paired by seed (the same pre-trained models): the mean difference "
                  "± its 95 % t-interval; \"better\" or \"worse\" only where the interval excludes zero.", "",
                  paired_table(differences)]
    ens = results.get("ensemble")
    if ens:
        ez = ens["eta_zeta"]
        lines += ["", f"## The eta/zeta grid {tag} (validation split)", "",
                  f"Chosen on validation: eta = {ez['chosen']['eta']}, zeta = {ez['chosen']['zeta']}; test there "
                  f"{ez['test_at_chosen']['error_mm']:.2f} mm, {100 * ez['test_at_chosen']['accuracy']:.1f} %.", "",
                  "## Noisy feedback " + tag, "",
                  f"- trained {'stably' if ens['noisy_feedback_stable'] else 'UNSTABLY'}",
                  f"- noisy feedback: {fmt(rows['noisy_feedback']['gt']['accuracy'], 1)} %, "
                  f"{fmt(rows['noisy_feedback']['gt']['error_mm'])} mm; feedback with p_eq: "
                  f"{fmt(rows['feedback']['gt']['accuracy'], 1)} %, {fmt(rows['feedback']['gt']['error_mm'])} mm"]
        lines += ["", f"## Fine-tuning time {tag}", "", "| method | s / epoch | x baseline |", "|---|---|---|"]
        base = ens["epoch_seconds"]["baseline"]
        lines += [f"| {k} | {v:.1f} | {v / base:.2f} |" for k, v in ens["epoch_seconds"].items()]
    return "\n".join(lines) + "\n"


def summary_json(results: dict[str, dict], preset: str) -> dict:
    """The machine-readable summary: every row tagged with its data source, the sweeps, the resolved
    configurations of every fine-tuned run and of the models they started from, software versions."""
    rows, source, seeds = table_rows(results)
    configs = {}
    for name, res in results.items():
        for group, records in res.get("records", {}).items():
            for r in records if isinstance(records, list) else []:
                configs[f"{name}/{group}/seed{r['seed']}"] = {"fusion": r["config"], "trained": r["trained"]}
    fb, ens = results.get("feedback", {}), results.get("ensemble", {})
    from .results import shared_parameters

    return {"preset": preset, "data": source, "seeds": seeds, "data_fingerprint": fingerprint(results),
            "files": sorted(results), "parameters": {k: v for k, (v, _) in shared_parameters(results).items()},
            "rows": {k: {"data": source, "label": ROWS[k][0], **v,
                         "original_fpha": {"error_mm": ROWS[k][1], "accuracy": ROWS[k][2]}} for k, v in rows.items()},
            "untrained_p_eq_sweep": {"data": source, **fb.get("untrained_sweep", {})},
            "trained_p_eq_sweep": {"data": source, **{p: r["test"] for p, r in fb.get("trained_sweep", {}).items()}},
            "eta_zeta": {"data": source, **ens.get("eta_zeta", {})},
            "noisy_feedback_stable": ens.get("noisy_feedback_stable"),
            "epoch_seconds": {"data": source, **ens.get("epoch_seconds", {})},
            "original_p_eq_sweep_fpha": {str(k): v for k, v in ORIGINAL_P_EQ_SWEEP.items()},
            "paired": {"data": source, **paired_differences(results)},
            "headroom": {"data": source, **headroom_shares(results)},
            "lookalike": {"data": source, **results.get("standalone", {}).get("lookalike", {})},
            "when_fusion_helps": _when_summary(results.get("when_fusion_helps")),
            "configs": configs, "software": software_versions()}
