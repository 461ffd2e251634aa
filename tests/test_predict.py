"""``python -m handfuse.predict``: a trained pipeline on a folder of depth frames (handfuse/predict.py).

The smoke preset's baseline is trained once, through the workbook's own training functions, into a
temporary runs folder; predict then runs on one synthetic smoke sequence's depth folder."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import copy_smoke_localiser, random_fusion_models
from handfuse.config import get_preset
from handfuse.errors import ConfigError, DataError
from handfuse.finetune import build_method, finetune, pretrained, resolved_config
from handfuse.fpha import read_skeleton_file, write_depth_png
from handfuse import localise as L
from handfuse.localise import load_refiner, locate_sequence
from handfuse.methods import headline
from handfuse.predict import FILES, WeightsNotFound, load_pipeline, main, predict_folder
from handfuse.skeleton import ACTIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(smoke_fusion_data, smoke_localiser, tmp_path_factory):
    """The smoke preset's trained baseline of seed 0 and the localiser of its depth-centred test sets in a
    temporary runs folder (also $HANDFUSE_RUNS while this module runs): (runs folder, the smoke data, one
    test sequence, the fine-tuned model)."""
    fpha, cache, _, _ = smoke_fusion_data
    runs = tmp_path_factory.mktemp("runs")
    copy_smoke_localiser(smoke_localiser, runs)
    preset = get_preset("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HANDFUSE_RUNS", str(runs))
        cfg = resolved_config("baseline", preset, headline("baseline"))
        models = pretrained(fpha, preset, 0, cfg.attention, cfg.film, "cpu", cache, progress=False)
        model, _ = finetune("baseline", models, fpha, preset, cfg, 0, "cpu", cache, progress=False)
        yield runs, fpha, next(r for r in fpha.test if fpha.num_frames(r) >= 4), model  # frame 1 has neighbours


def _copy_frames(fpha, ref, folder: Path) -> Path:
    """The sequence's depth frames copied into ``folder`` (outside any data root: "your recording")."""
    shutil.copytree(fpha.depth_dir(ref), folder)
    return folder


def _error_mm(skeleton: Path, truth: np.ndarray) -> float:
    return float(np.linalg.norm(read_skeleton_file(skeleton) - truth, axis=-1).mean())


def test_predict_writes_poses_actions_and_record(trained, tmp_path):
    runs, fpha, ref, finetuned = trained
    truth = read_skeleton_file(fpha.skeleton_path(ref))  # (T, 21, 3)
    T = len(truth)
    out = tmp_path / "out"
    p = predict_folder(fpha.depth_dir(ref), out, preset="smoke", runs=runs, progress=False)

    poses = read_skeleton_file(out / FILES["skeleton"])  # FPHA's reader takes it back
    assert poses.shape == (T, 21, 3)
    np.testing.assert_allclose(poses, p.joints_mm, atol=1e-3)

    # the very weights fine-tuning selected: the same outputs as the model finetune() returned
    pipeline = load_pipeline(preset="smoke", runs=runs)
    same = predict_folder(fpha.depth_dir(ref), tmp_path / "same", animate=False, progress=False,
                          pipeline=dataclasses.replace(pipeline, model=finetuned.eval()))
    np.testing.assert_allclose(p.joints_mm, same.joints_mm, atol=1e-4)
    np.testing.assert_allclose(p.probs, same.probs, atol=1e-6)
    # and they are trained: below the error of untrained networks of the same architecture
    untrained = build_method("baseline", random_fusion_models(0, False, pipeline.config.film), pipeline.preset,
                             pipeline.config, 0).eval()
    untrained = dataclasses.replace(pipeline, model=untrained, runs={}, digests={})
    q = predict_folder(fpha.depth_dir(ref), tmp_path / "untrained", pipeline=untrained, animate=False, progress=False)
    error, error_untrained = _error_mm(out / FILES["skeleton"], truth), _error_mm(q.files["skeleton"], truth)
    assert error < error_untrained, (error, error_untrained)

    with open(out / FILES["actions"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", *ACTIONS]
    probs = np.array([[float(v) for v in row[1:]] for row in rows[1:]])  # (T, 45)
    assert [int(row[0]) for row in rows[1:]] == list(range(T))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    record = json.loads((out / FILES["record"]).read_text())
    sequence = list(record["sequence_probabilities"].values())  # (45,) in ACTIONS order
    assert record["predicted_action"]["name"] == p.action == ACTIONS[int(np.argmax(sequence))]
    assert sum(sequence) == pytest.approx(1.0)
    assert record["method"] == "baseline" and record["frames"] == T
    assert Path(record["weights"]["fused"]).parent == runs / "smoke" / "models"
    assert (Path(record["weights"]["fused"]) / "best.pt").is_file()
    assert record["trained_on"]["data_source"] == "synthetic"
    assert record["data_source"].startswith("synthetic benchmark") and ref.key in record["data_source"]
    assert record["annotation"]["error_mm"] == pytest.approx(error, abs=1e-2)
    with open(out / FILES["centres"]) as f:
        centres = list(csv.DictReader(f))
    assert record["located"] == sum(c["centre"] == "located" for c in centres) == T - len(record["fallback_frames"])
    assert Image.open(out / FILES["gif"]).n_frames == T
    sheet = Image.open(out / FILES["sheet"])  # one tile per frame, SHEET_COLUMNS to a row
    assert sheet.width == min(T, L.SHEET_COLUMNS) * (640 // L.SHEET_SCALE + L.SHEET_GAP_PX) - L.SHEET_GAP_PX
    assert record["files"]["sheet"] == FILES["sheet"]


def test_predict_locates_the_hand_as_the_depth_centred_test_sets_do(trained, smoke_localiser, tmp_path):
    """The crops are centred by the tracker with the learned refinement of the workbook's depth-centred test
    sets, found beside the method's weights, its learned detector overruling only in frames without a table plane
    unless --detector says otherwise, tracked both ways unless --forward-only; --no-refine runs the tracker alone;
    each says so."""
    runs, fpha, ref, _ = trained
    folder = runs / "smoke" / "models" / smoke_localiser.name
    depths = [fpha.read_depth(ref, t) for t in range(fpha.num_frames(ref))]
    p = predict_folder(fpha.depth_dir(ref), tmp_path / "refined", preset="smoke", runs=runs, animate=False,
                       progress=False)
    assert p.record["weights"]["localiser"] == str(folder) and str(folder) in p.record["localiser"]
    assert "ComRefNet" in p.record["localiser"] and "in a frame without a table plane" in p.record["localiser"]
    assert "forward and backward" in p.record["localiser"]

    def centres(out: Path) -> np.ndarray:
        with open(out / FILES["centres"]) as f:
            return np.array([[float(r[k]) for k in ("x_mm", "y_mm", "z_mm")] for r in csv.DictReader(f)])

    refined = locate_sequence(depths, refiner=load_refiner(folder), detector=L.NO_TABLE, both_ways=True).centres
    np.testing.assert_allclose(centres(tmp_path / "refined"), refined, atol=1e-3)
    assert main([str(fpha.depth_dir(ref)), "--out", str(tmp_path / "detector"), "--preset", "smoke", "--runs",
                 str(runs), "--no-animation", "--detector", "always", "--forward-only"]) == 0
    record = json.loads((tmp_path / "detector" / FILES["record"]).read_text())
    assert "overruled by a learned whole-frame detector where it disagrees + ComRefNet" in record["localiser"]
    assert "forward and backward" not in record["localiser"]
    np.testing.assert_allclose(centres(tmp_path / "detector"),
                               locate_sequence(depths, refiner=load_refiner(folder)).centres, atol=1e-3)
    with pytest.raises(SystemExit):  # nothing to let the detector overrule
        main([str(fpha.depth_dir(ref)), "--out", str(tmp_path / "x"), "--preset", "smoke", "--no-refine", "--detector",
              "never"])
    q = main([str(fpha.depth_dir(ref)), "--out", str(tmp_path / "alone"), "--preset", "smoke", "--runs", str(runs),
              "--no-animation", "--no-refine"])
    assert q == 0
    record = json.loads((tmp_path / "alone" / FILES["record"]).read_text())
    assert "no learned refinement" in record["localiser"] and "localiser" not in record["weights"]
    np.testing.assert_allclose(centres(tmp_path / "alone"), locate_sequence(depths, both_ways=True).centres, atol=1e-3)
    assert not np.allclose(refined, locate_sequence(depths).centres, atol=1.0)  # the two localisers differ here


def test_your_recording_and_lost_frames(trained, tmp_path):
    """A copy outside the data root is "your recording" and predicts the same; a frame without a hand
    takes the nearest located frame's centre, marked, or is refused by name."""
    runs, fpha, ref, _ = trained
    reference = predict_folder(fpha.depth_dir(ref), tmp_path / "ref", preset="smoke", runs=runs, animate=False,
                               progress=False)
    frames = _copy_frames(fpha, ref, tmp_path / "mine")
    p = predict_folder(frames, tmp_path / "mine_out", preset="smoke", runs=runs, animate=False, progress=False)
    assert p.record["data_source"] == "your recording" and p.record["annotation"] is None
    np.testing.assert_allclose(p.joints_mm, reference.joints_mm)

    write_depth_png(frames / "depth_0001.png", np.zeros((480, 640), np.uint16))  # no hand: lost
    p = predict_folder(frames, tmp_path / "lost", preset="smoke", runs=runs, animate=False, progress=False)
    assert p.record["fallback_frames"] == [1] and p.status[1] == "fallback"
    assert p.record["located"] == len(p.status) - 1
    with open(tmp_path / "lost" / FILES["centres"]) as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["centre"] == "fallback" and rows[1]["from_frame"] in ("0", "2")  # the nearest located frame
    donor = rows[int(rows[1]["from_frame"])]
    xyz = ("x_mm", "y_mm", "z_mm")
    assert donor["centre"] == "located" and [rows[1][k] for k in xyz] == [donor[k] for k in xyz]
    with pytest.raises(DataError, match="depth_0001.png"):
        predict_folder(frames, tmp_path / "refused", preset="smoke", runs=runs, on_lost="refuse", progress=False)


def test_missing_weights_name_the_training_command(trained, tmp_path, monkeypatch):
    runs, fpha, ref, _ = trained
    with pytest.raises(WeightsNotFound) as e:  # no pre-trained models of seed 1
        predict_folder(fpha.depth_dir(ref), tmp_path / "a", preset="smoke", seed=1, runs=runs, progress=False)
    assert f"python -m handfuse train fusion --preset smoke --method baseline --seed 1 --runs {runs}" in str(e.value)
    with pytest.raises(WeightsNotFound) as e:  # the pre-trained models are there, no fine-tuned feedback
        predict_folder(fpha.depth_dir(ref), tmp_path / "b", method="feedback", preset="smoke", runs=runs,
                       options={"p_eq": 0.5}, progress=False)
    message = str(e.value)
    assert "fuse-feedback-" in message and "-seed0: no trained weights of the fine-tuned feedback" in message
    command = f"python -m handfuse train fusion --preset smoke --method feedback --seed 0 --set p_eq=0.5 --runs {runs}"
    assert command in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the method's weights are there, the localiser's refinement is not: its own training command, or --no-refine
    bare = tmp_path / "bare"
    shutil.copytree(runs, bare, ignore=shutil.ignore_patterns("localise-comref-*"))
    with pytest.raises(WeightsNotFound) as e:
        predict_folder(fpha.depth_dir(ref), tmp_path / "d", preset="smoke", runs=bare, progress=False)
    assert "localise-comref-" in str(e.value) and "no trained weights of the localiser's learned refinement" in str(e.value)
    assert f"python -m handfuse.localise train --preset smoke --runs {bare}" in str(e.value) and "--no-refine" in str(e.value)
    assert not (tmp_path / "d").exists()
    # the command is one the CLI takes, and trains into the folder predict looked for

    asked = {}

    def train_refiner(*args):
        asked["folder"] = L.refiner_run(*args)[0]
        return None, dataclasses.make_dataclass("Result", ["run_dir", "test"])(str(asked["folder"]), {})

    monkeypatch.setattr(L, "train_refiner", train_refiner)
    assert L.main(f"python -m handfuse.localise train --preset smoke --runs {bare}".split()[3:]) == 0
    assert str(asked["folder"]) == str(e.value).split(":")[0]
    p = predict_folder(fpha.depth_dir(ref), tmp_path / "d", preset="smoke", runs=bare, refine=False, animate=False,
                       progress=False)
    assert "no learned refinement" in p.record["localiser"]
    if not torch.cuda.is_available():  # --device cuda where there is none: refused by name, before any work
        with pytest.raises(ConfigError, match="'device'.*CUDA is not available"):
            predict_folder(fpha.depth_dir(ref), tmp_path / "c", preset="smoke", runs=runs, device="cuda")

    # the command is one the CLI takes, and resolves to the configuration predict looked for
    import handfuse.__main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "_train", lambda args: seen.update(zip(("preset", "cfg"), cli._train_config(args)),
                                                                args=args))
    assert cli.main(command.split()[3:]) == 0
    preset = get_preset("smoke")
    assert seen["preset"] == preset and seen["args"].seed == 0 and seen["args"].runs == str(runs)
    assert seen["cfg"] == resolved_config("feedback", preset, headline("feedback", p_eq=0.5))


def test_cli_runs_and_refuses_by_name(trained, tmp_path, capsys):
    runs, fpha, ref, _ = trained
    out = tmp_path / "cli"
    common = ["--preset", "smoke", "--runs", str(runs), "--no-animation"]
    assert main([str(fpha.depth_dir(ref)), "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    action = json.loads((out / FILES["record"]).read_text())["predicted_action"]["name"]
    assert f"sequence action {action}" in printed and str(out / FILES["skeleton"]) in printed
    assert not (out / FILES["gif"]).exists()
    # another recording's predictions are not written over this folder's
    mine = _copy_frames(fpha, ref, tmp_path / "mine")
    assert main([str(mine), "--out", str(out), *common]) == 2
    assert "holds the predictions of another run" in capsys.readouterr().err
    # as a module, in a fresh process: missing weights are one error line naming the command
    empty = tmp_path / "empty_runs"
    r = subprocess.run([sys.executable, "-m", "handfuse.predict", str(fpha.depth_dir(ref)), "--out",
                        str(tmp_path / "x"), "--preset", "smoke", "--runs", str(empty)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"python -m handfuse train fusion --preset smoke --method baseline --seed 0 --runs {empty}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["not_a_folder", "no_pngs", "gap", "eight_bit", "wrong_size"])
def test_bad_input_names_the_file(trained, tmp_path, case):
    runs, fpha, ref, _ = trained
    frames = _copy_frames(fpha, ref, tmp_path / "frames")
    bad = frames / "depth_0001.png"
    if case == "not_a_folder":
        frames = bad
    elif case == "no_pngs":
        for png in frames.glob("*.png"):
            png.unlink()
        bad = frames
    elif case == "gap":
        bad.unlink()
    elif case == "eight_bit":
        cv2.imwrite(str(bad), np.full((480, 640), 90, np.uint8))
    else:
        cv2.imwrite(str(bad), np.full((240, 320), 400, np.uint16))
    with pytest.raises(DataError) as e:
        predict_folder(frames, tmp_path / "out", preset="smoke", runs=runs, progress=False)
    assert e.value.path == bad
    assert str(e.value).startswith(str(bad))
    assert {"eight_bit": "8-bit", "wrong_size": "640x480", "gap": "missing", "no_pngs": "no depth frames",
            "not_a_folder": "not a folder"}[case] in str(e.value)
