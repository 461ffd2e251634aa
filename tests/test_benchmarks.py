"""The scaling benchmark runs end to end (smoke preset, one repeat) and fits the slopes it reports.

Its timings are not checked here (timed tests on shared CPUs fail at random); only that every
method is measured at every length and size, the slopes are the fits of those numbers, and the
figure is written."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import scaling


def test_slope_recovers_a_power_law():
    xs = [8, 16, 32]
    assert scaling.slope(xs, [3.0 * x**1.0 for x in xs]) == pytest.approx(1.0)
    assert scaling.slope(xs, [0.5 * x**2.0 for x in xs]) == pytest.approx(2.0)
    assert scaling.slope(xs, [7.0 for _ in xs]) == pytest.approx(0.0, abs=1e-12)


def test_scaling_benchmark_measures_every_method_length_and_size(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDFUSE_FIGURES", str(tmp_path))
    r = scaling.run("smoke", repeats=1, figure=True)
    assert r["lengths"] == list(scaling.LENGTHS)
    assert r["crop_sizes"] == [16, 32, 48]  # half, one and a half times the smoke preset's 32-pixel crop
    labels = [label for label, _, _ in scaling.METHODS]
    assert list(r["rows"]) == labels + ["HPE trunk (forward only)"]
    for label in labels:
        row = r["rows"][label]
        assert len(row["seconds_by_T"]) == 3 and len(row["seconds_by_S"]) == 3
        assert all(math.isfinite(t) and t > 0 for t in row["seconds_by_T"] + row["seconds_by_S"])
        # the S sweep's middle point is the T sweep's T = 16 point: the same measurement, not a second one
        assert row["seconds_by_S"][1] == row["seconds_by_T"][scaling.LENGTHS.index(scaling.T_FIXED)]
        assert row["slope_T"] == pytest.approx(float(np.polyfit(np.log(r["lengths"]), np.log(row["seconds_by_T"]), 1)[0]))
    assert sorted(p.split("/")[-1] for p in r["figure"]) == ["bench_scaling.pdf", "bench_scaling.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("bench_scaling.png", "bench_scaling.pdf"))


def test_fusion_benchmark_runs_every_variant_on_the_smoke_preset():
    from benchmarks import fusion_speed

    r = fusion_speed.run("smoke", batches=2, repeats=1)  # the smoke preset holds fewer sequences than the default
    assert list(r["rows"]) == [label for label, _, _ in fusion_speed.VARIANTS]
    assert r["train_sequences"] == 2 * r["batch_size"] and r["eval_sequences"] > 0
    base = r["rows"]["baseline"]
    for row in r["rows"].values():
        assert math.isfinite(row["train_seq_per_s"]) and row["train_seq_per_s"] > 0
        assert row["train_vs_baseline"] == pytest.approx(row["train_seq_per_s"] / base["train_seq_per_s"])
        assert row["eval_spread"][0] <= row["eval_seq_per_s"] <= row["eval_spread"][1]
    for key in ("train", "eval"):  # the fold against the plain modules, paired runs
        fold = r["fold"][key]
        assert 0 < fold["spread"][0] <= fold["median"] <= fold["spread"][1]


def test_pool_benchmark_times_both_ways_on_the_smoke_preset(monkeypatch):
    from benchmarks import pool_speed

    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    r = pool_speed.run("smoke", batches=2, pairs=1)
    assert r["workers"] == 2 and r["jobs"] == 4
    assert r["one_after_the_other_s"] > 0 and r["side_by_side_s"] > 0
    assert r["speedup"]["median"] == r["one_after_the_other_s"] / r["side_by_side_s"]
    pre = r["pretraining"]  # HPE pre-training steps, timed apart
    assert pre["jobs"] == 4 and pre["batches_per_job"] > 0 and pre["one_after_the_other_s"] > 0
    assert pre["speedup"]["median"] == pre["one_after_the_other_s"] / pre["side_by_side_s"]


def test_each_stage_records_the_machine_it_ran_on(tmp_path, monkeypatch):
    """A stage that is re-run gets this machine's CPU model and ISA; one that is not keeps its own."""
    import json
    import sys

    import torch

    from benchmarks import __main__ as bench
    from benchmarks import hpe_speed

    out = tmp_path / "results.json"
    older = {"cpu": "Some Other CPU", "isa": "AVX2", "cores": 2}
    out.write_text(json.dumps({"data": {"rows": [1], "machine": older}, "machine": older}))
    monkeypatch.setattr(hpe_speed, "run", lambda repeats: {"rows": [], "repeats": repeats})
    monkeypatch.setattr(hpe_speed, "report", lambda r: None)
    monkeypatch.setattr(sys, "argv", ["benchmarks", "--stages", "hpe", "--repeats", "2", "--out", str(out)])
    bench.main()
    r = json.loads(out.read_text())
    assert r["data"] == {"rows": [1], "machine": older}  # not re-run: its own machine, untouched
    assert r["hpe"]["repeats"] == 2 and r["hpe"]["machine"] == r["machine"] != older
    assert r["machine"]["isa"] == torch.backends.cpu.get_cpu_capability()
    assert r["machine"]["cpu"] and r["machine"]["cpu"] != "Some Other CPU"


def test_hpe_benchmark_reports_every_row_against_its_matmul(monkeypatch, capsys):
    """The HPE benchmark's plumbing on a tiny channels_last-safe net (the compile itself is replaced by
    the eager model: compiling costs tens of seconds; frozen_for_inference has its own test)."""
    from dataclasses import replace

    from benchmarks import hpe_speed
    from handfuse.config import get_preset
    from handfuse.models.hpe import HPEConfig

    tiny = HPEConfig(crop=32, stem_channels=16, widths=(16, 32, 32, 32), blocks=(1, 1, 1, 1), fc=64, min_mid=16)
    monkeypatch.setattr(hpe_speed, "get_preset", lambda name: replace(get_preset("smoke"), hpe=tiny))
    monkeypatch.setattr(hpe_speed, "frozen_for_inference", lambda model: (lambda x: model(x)["joints"]))
    monkeypatch.setattr(hpe_speed, "STEPS", 1)
    matmuls = iter([100.0, 300.0, 100.0, 300.0, 100.0])
    monkeypatch.setattr(hpe_speed, "matmul_gflops", lambda repeats: next(matmuls))
    r = hpe_speed.run(repeats=1)
    assert [(x["preset"], x["channels_last"]) for x in r["rows"]] == [
        ("cpu", False), ("cpu", True), ("paper", False), ("paper", True)]
    for x in r["rows"]:
        assert x["matmul_gflops"] == 200.0  # the mean of the two measurements around the row
        assert x["infer_ratio"] == pytest.approx(x["infer_gflops"] / 200.0)
        assert x["infer_ratio_batch256"] == pytest.approx(x["infer_fps_batch256"] * x["gflop_per_frame"] / 200.0)
        assert ("frozen_infer_ratio_batch256" in x) == x["channels_last"]
    assert r["matmul_measurements"] == [100.0, 300.0, 100.0, 300.0, 100.0]
    hpe_speed.report(r)
    assert "b256" in capsys.readouterr().out


def test_several_stages_run_each_in_a_process_of_its_own(tmp_path, monkeypatch):
    import subprocess
    import sys

    from benchmarks import __main__ as bench

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    monkeypatch.setattr(bench, "data_stages", lambda repeats: pytest.fail("a stage ran in the parent process"))
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["benchmarks", "--stages", "data", "hpe", "--repeats", "2", "--out", str(out)])
    bench.main()
    assert [c[0][-5:] for c in calls] == [["data", "--repeats", "2", "--out", str(out)],
                                          ["hpe", "--repeats", "2", "--out", str(out)]]
    assert all(c[0][:4] == [sys.executable, "-m", "benchmarks", "--stages"] and c[1]["check"] for c in calls)


def test_cuda_benchmark_refuses_a_machine_without_a_gpu():
    """A child process with its GPUs hidden is a machine without one, on any machine."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "benchmarks.cuda_speed", "--only", "hpe"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1 and "needs a CUDA GPU; this machine has none" in done.stderr, done.stderr[-2000:]


def test_centre_jitter_breakdown_bins_the_frames_by_centre_error():
    """A pose estimator that answers the crop centre: its error is the centre's, so each frame's excess
    is its centre error and lands in that error's bin, with its share of the total."""
    from types import SimpleNamespace

    import torch

    from benchmarks.centre_jitter import BINS_MM, breakdown
    from handfuse.datasets import FrameDataset

    class AtTheCentre(torch.nn.Module):
        def forward(self, x, action=None):
            return {"joints": torch.zeros(len(x), 21, 3)}

    truth = np.array([[0, 0, 400], [10, 0, 410], [20, 5, 420], [30, 5, 430]], np.float32)  # (4, 3) middle MCPs
    off = np.array([[3, 0, 0], [0, 12, 0], [0, 0, 40], [60, 80, 0]], np.float32)  # 3, 12, 40 and 100 mm

    def cached(centres):
        cache = SimpleNamespace(crops=np.zeros((4, 8, 8), np.float16), centres=centres, centres_gt=truth,
                                joints=np.repeat(truth[:, None], 21, 1), offsets=np.array([0, 2]), lengths=np.array([2, 2]),
                                labels=np.array([0, 1]), cfg=SimpleNamespace(cube_mm=200.0), keys=["a", "b"],
                                index_of={"a": 0, "b": 1}.__getitem__)
        return FrameDataset(cache, ["b", "a"])  # the frames of both sequences, the second first

    bins = breakdown(AtTheCentre(), cached(truth), cached(truth + off))
    assert [b["centre_error_mm"] for b in bins] == [[lo, hi] for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:])]
    by_lower = {b["centre_error_mm"][0]: b for b in bins}
    for lo, err in ((0, 3.0), (10, 12.0), (30, 40.0), (80, 100.0)):
        assert by_lower[lo]["frames"] == 1 and by_lower[lo]["excess_mm"] == pytest.approx(err, abs=1e-3)
        assert by_lower[lo]["share_of_excess"] == pytest.approx(err / 155.0, abs=1e-5)
    assert sum(b["frames"] for b in bins) == 4 and sum(b["share_of_frames"] for b in bins) == pytest.approx(1.0)


def test_centre_jitter_benchmark_refuses_the_study_benchmark_as_a_dev_one(capsys):
    from benchmarks.centre_jitter import main

    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--dev-seeds", "0"])
    assert "--dev-seeds: 0 is the preset's own benchmark" in capsys.readouterr().err


def _scale_record(sigma: float, seed: int, base: float, changes=None) -> dict:
    """A stored refiner_scale record whose refined mean error is ``base`` + the change's index, on both dev sets."""
    from benchmarks import refiner_scale as S

    changes = {c: {"tracker+comref": {"mean_mm": base + k, "off_hand_pct": 0.5}}
               for k, c in enumerate(S.CHANGES) if changes is None or c in changes}
    return {"sigma": sigma, "seed": seed, "every": 6, "dev_seeds": [1, 2], "val": {"error_mm": base},
            "dev1": changes, "dev2": changes}


def test_refiner_scale_pairs_each_sigma_with_the_first_by_seed(tmp_path, monkeypatch, capsys):
    from benchmarks import localise as B
    from benchmarks import refiner_scale as S

    monkeypatch.setattr(S, "OUT", tmp_path / "refiner_scale.json")
    for seed, (plain, scaled) in enumerate([(8.0, 7.0), (9.0, 7.5), (10.0, 8.0)]):  # differences -1, -1.5, -2
        B.store("smoke", S.Variant(0.0).key(seed), _scale_record(0.0, seed, plain), S.OUT)
        B.store("smoke", S.Variant(0.08).key(seed), _scale_record(0.08, seed, scaled), S.OUT)
    assert S.main(["--preset", "smoke", "--report"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "8.00 / 9.00 / 10.00; 0.50 %" in rows["as rendered"] and "7.00 / 7.50 / 8.00" in rows["as rendered"]
    assert rows["as rendered"].endswith("| -1.50 ± 1.24 |")  # mean of -1, -1.5, -2; t(2) 4.303 x 0.5 / sqrt(3)
    assert "9.00 / 10.00 / 11.00" in rows["size-averaged"]  # the mean of changes 0, 1 and 2: base + 1
    with pytest.raises(SystemExit):  # a seed never measured is named
        S.main(["--preset", "smoke", "--report", "--seeds", "0", "3"])
    assert "sigma0-seed3" in capsys.readouterr().err


def test_refiner_scale_pairs_each_hole_share_with_the_first_and_leaves_out_changes_not_all_measured(
        tmp_path, monkeypatch, capsys):
    from benchmarks import localise as B
    from benchmarks import refiner_scale as S

    monkeypatch.setattr(S, "OUT", tmp_path / "refiner_scale.json")
    for seed, (plain, holed) in enumerate([(8.0, 7.0), (9.0, 7.5), (10.0, 8.0)]):
        B.store("smoke", S.Variant(0.08).key(seed), _scale_record(0.08, seed, plain), S.OUT)
        B.store("smoke", S.Variant(0.08, 0.4).key(seed), _scale_record(0.08, seed, holed), S.OUT)
        B.store("smoke", S.Variant(0.0).key(seed), _scale_record(0.0, seed, plain, S.CHANGES[:5]), S.OUT)  # an older record
    assert S.main(["--preset", "smoke", "--report", "--sigmas", "0.08", "--holes", "0", "0.4"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "sigma 0.08, holes 0.4 - sigma 0.08" in rows["change"]
    assert rows["speckle"].endswith("| -1.50 ± 1.24 |") and "13.00 / 14.00 / 15.00" in rows["speckle"]
    assert "11.75 / 12.75 / 13.75" in rows["hole-averaged"]  # the mean of changes 0, 4, 5 and 6: base + 3.75
    assert S.main(["--preset", "smoke", "--report", "--sigmas", "0", "0.08"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "speckle" not in rows and "hole-averaged" not in rows and "size-averaged" in rows  # sigma 0 lacks them
    assert "pose error, refined centres" not in rows  # no record has a pose measurement
    for seed in range(3):  # pose errors: refined 20 + seed on dev 1 (100 frames), 22 + seed on dev 2 (300); holed -0.4
        for holes, shift in ((0.0, 0.0), (0.4, -0.4)):
            r = json.loads(S.OUT.read_text())["smoke"][S.Variant(0.08, holes).key(seed)]
            r["pose"] = {f"dev{d}": {"frames": n, "depth_centre_mm": base + seed + shift, "true_centre_mm": 18.0}
                         for d, n, base in ((1, 100, 20.0), (2, 300, 22.0))}
            B.store("smoke", S.Variant(0.08, holes).key(seed), r, S.OUT)
    assert S.main(["--preset", "smoke", "--report", "--sigmas", "0.08", "--holes", "0", "0.4"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "21.50 / 22.50 / 23.50 | 21.10 / 22.10 / 23.10 | -0.40 ± 0.00" in rows["pose error, refined centres"]
    assert rows["pose error, true centres"].endswith("| +0.00 ± 0.00 |")
    assert S.main(["--preset", "smoke", "--report", "--sigmas", "0.08", "--holes", "0", "0.4", "--seeds", "1"]) == 0
    assert "| -1.50 (one seed: no interval) |" in capsys.readouterr().out  # one seed: no interval, said so


@pytest.mark.parametrize("args, named", [(["--dev-seeds", "0"], "is the preset's own benchmark"),
                                         (["--sigmas", "0", "0.3"], "refine.scale_sigma"),
                                         (["--holes", "0", "2"], "refine.hole_share"),
                                         (["--every", "0"], "--every and --pose-every must be"),
                                         (["--pose-every", "0"], "--every and --pose-every must be"),
                                         (["--pose-hpe", "no-such-run"], "--pose-hpe: no-such-run holds no finished")])
def test_refiner_scale_refuses_bad_parameters_by_name(args, named, capsys):
    from benchmarks.refiner_scale import main

    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--report", *args])
    assert named in capsys.readouterr().err
