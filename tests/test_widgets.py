"""The single-sequence explorers and animations: their numbers, their in-place updates, their files.

As in ``test_methods``, the models are random but their FiLM layers get random
weights, so that what feedback is fed really changes the pose: "p_eq = 1 and
p_eq = 0 differ" could not pass by accident with identity FiLMs.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_frame, random_fusion_models
from handfuse import animate
from handfuse.animate import (export_animation, method_comparison_animation, pose_action_animation, sequence_outputs,
                              top_classes)
from handfuse.cache import get_cache
from handfuse.camera import FPHA_DEPTH
from handfuse.config import get_preset
from handfuse.datasets import SequenceDataset
from handfuse.fpha import FPHA
from handfuse.finetune import Pretrained
from handfuse.methods import build, method_config
from handfuse.methods.baseline import SequentialBaseline
from handfuse.paths import ensure_synthetic
from handfuse.preprocess import crop, joints_to_crop_pixels
from handfuse.skeleton import ACTIONS, CENTRE_JOINT
from handfuse.widgets import (NO_ATTENTION, attention_of, attention_viewer, crop_pixels, frame_scrubber, p_eq_curves,
                              p_eq_explorer)

PRESET = get_preset("smoke")
FFPROBE = "ffprobe"  # Debian's ffmpeg package ships it beside ffmpeg
HALF = PRESET.preprocess.cube_mm / 2


def _models(seed: int, attention: bool, film: str = "both") -> Pretrained:
    return random_fusion_models(seed, attention, film)


@pytest.fixture(scope="module")
def seqs(tmp_path_factory) -> SequenceDataset:
    fpha = FPHA(ensure_synthetic("smoke"))
    cache = get_cache(fpha, PRESET.preprocess, cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)
    data = SequenceDataset(cache, fpha.test[:6])
    assert min(data[i]["length"] for i in range(len(data))) >= 3, "the tests need sequences of a few frames"
    return data


@pytest.fixture(scope="module")
def feedback():
    models = _models(0, False)
    return models, build("feedback", models, HALF, method_config("feedback"))


def test_sequence_outputs_are_one_sequence_of_the_method(seqs, feedback):
    _, model = feedback
    model.train()
    item = seqs[1]
    out = sequence_outputs(model, item)
    T = item["length"]
    assert model.training, "the model's mode must be restored"
    assert out["joints_mm"].shape == (T, 21, 3) and out["probs"].shape == (T, 45) and out["label"] == item["label"]
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(out["frame_error_mm"],
                               np.linalg.norm(out["joints_mm"] - item["joints_mm"].numpy(), axis=-1).mean(-1), rtol=1e-6)
    assert np.isfinite(out["frame_error_mm"]).all() and out["attention"] is None


def test_p_eq_curves_move_with_p_eq_and_p_eq_1_is_the_w_eq_fed_chain(seqs, feedback):
    models, model = feedback
    item = seqs[2]
    ones, zeros = p_eq_curves(model, item, 1.0), p_eq_curves(model, item, 0.0)
    assert model.cfg.eval_feed == "prediction" and model.cfg.eval_mix == 0.0, "the config must be restored"
    assert np.abs(ones["frame_error_mm"] - zeros["frame_error_mm"]).max() > 0.1, "p_eq changed no pose"
    assert ones["frame_error_mm"][0] == pytest.approx(zeros["frame_error_mm"][0], rel=1e-6), "frame 0 is fed w_eq"
    chain = sequence_outputs(SequentialBaseline(models.hpe_film, models.har, HALF), item)  # the HPE fed w_eq (None)
    np.testing.assert_allclose(ones["frame_error_mm"], chain["frame_error_mm"], atol=1e-3)
    np.testing.assert_allclose(ones["probs"], chain["probs"], atol=1e-5)
    halfway = p_eq_curves(model, item, 0.5)
    assert not np.allclose(halfway["probs"], ones["probs"]) and not np.allclose(halfway["probs"], zeros["probs"])


def test_p_eq_explorer_redraws_its_figure_in_place(seqs, feedback):
    models, model = feedback
    explorer = p_eq_explorer(model, seqs, sequence=2, source="synthetic")
    fig, slider = explorer.figure, explorer.controls["p_eq"]
    assert fig in explorer.children and slider.value == 0.0
    assert "synthetic" in fig.layout.title.text
    before = np.array(fig.data[0].y)
    np.testing.assert_allclose(before, p_eq_curves(model, seqs[2], 0.0)["frame_error_mm"])
    slider.value = 1.0
    after = np.array(fig.data[0].y)
    assert explorer.figure is fig and not np.allclose(before, after)
    np.testing.assert_allclose(after, p_eq_curves(model, seqs[2], 1.0)["frame_error_mm"])
    label = seqs[2]["label"]
    assert fig.data[3].name == ACTIONS[label] + " (true)" and fig.data[3].line.color == animate.TRUE_COLOUR
    np.testing.assert_allclose(np.array(fig.data[3].y), p_eq_curves(model, seqs[2], 1.0)["probs"][:, label])
    explorer.controls["sequence"].value = 4
    assert len(fig.data[0].y) == seqs[4]["length"] and "sequence 4" in fig.layout.title.text
    assert explorer.controls["sequence"].options[4][0] == f"4: {ACTIONS[seqs[4]['label']]}"


def test_crop_pixels_agree_with_the_crop_geometry(seqs):
    item = seqs[0]
    S = item["depth"].shape[-1]
    joints, centre = item["joints_mm"].numpy(), item["centre"].numpy()
    px = crop_pixels(joints, centre, HALF, S)  # (T, 21, 2)
    # the crops are centred on the ground-truth middle MCP: it sits in the crop's middle
    np.testing.assert_allclose(px[:, CENTRE_JOINT], (S - 1) / 2, atol=1e-3)
    for t in range(item["length"]):
        expected = joints_to_crop_pixels(joints[t], centre[t], FPHA_DEPTH, PRESET.preprocess.cube_mm, S)
        np.testing.assert_allclose(px[t], expected, atol=1e-3)


def test_crop_pixels_land_on_the_joints_in_a_drawn_frame():
    """A frame with a disc drawn at each joint, all in the upper left of the crop (camera y points
    down): every joint's pixel lies on its disc; the y-flipped and x-flipped pixels miss."""
    rng = np.random.default_rng(0)
    centre = np.array([0.0, 0.0, 400.0])
    joints = np.stack([rng.uniform(-90, -35, 21), rng.uniform(-90, -35, 21), rng.uniform(380, 420, 21)], -1)
    S, cube = 32, 250.0
    image = crop(make_tiny_frame(joints, table_mm=900.0), centre, FPHA_DEPTH, cube, S)  # (S, S), table at +1
    px = crop_pixels(joints, centre, cube / 2, S)
    assert (px < (S - 1) / 2).all(), "upper left: x < middle and y < middle"
    x, y = np.round(px).astype(int).T
    assert (image[y, x] < 0.5).all(), "a joint's pixel must be on its disc"
    assert (image[S - 1 - y, x] == 1.0).all() and (image[y, S - 1 - x] == 1.0).all()


def test_attention_weights_sum_to_1_or_are_none(seqs):
    item = seqs[3]
    attention = build("baseline", _models(1, True), HALF, method_config("baseline", attention=True))
    last = build("baseline", _models(1, False), HALF)
    weights, guess = attention_of(attention, item)
    assert weights.shape == (item["length"],) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert guess == int(sequence_outputs(attention, item)["sequence_probs"].argmax())
    none, guess_last = attention_of(last, item)
    assert none is None and 0 <= guess_last < 45

    viewer = attention_viewer({"no attention": last, "attention": attention}, seqs, source="synthetic")
    fig = viewer.figure
    texts = [a.text for a in fig.layout.annotations]
    assert NO_ATTENTION in texts and "synthetic" in texts[0]
    assert len(fig.data[1].y) == 0 and len(fig.data[2].y) == seqs[0]["length"]
    strip = np.array(fig.data[0].z, dtype=float)
    assert not any(isinstance(v, float) and np.isnan(v) for row in fig.data[0].z for v in row), \
        "NaN is not JSON: the strip's gaps must go to the browser as null"
    assert np.isnan(strip).any() and np.isfinite(strip).sum() == min(12, seqs[0]["length"]) * strip.shape[0] ** 2
    viewer.controls["sequence"].value = 3
    np.testing.assert_allclose(np.array(fig.data[2].y), weights, atol=1e-6)
    assert not np.array_equal(strip, np.array(fig.data[0].z, dtype=float), equal_nan=True)
    assert f"true {ACTIONS[item['label']]}" in fig.layout.annotations[2].text


def test_pose_action_animation_has_one_frame_per_sequence_frame(seqs, feedback):
    _, model = feedback
    out = sequence_outputs(model, seqs[1])
    T = len(out["probs"])
    fig = pose_action_animation(out["joints_mm"], out["joints_true"], out["probs"], out["label"], "test (synthetic)")
    assert len(fig.frames) == T and len(fig.layout.sliders[0].steps) == T
    classes = top_classes(out["probs"], out["label"])
    assert len(classes) == 6 and out["label"] in classes
    for t in (0, T - 1):
        bars = fig.frames[t].data[-1]
        np.testing.assert_allclose(np.array(bars.x), out["probs"][t, classes])
        pred = np.array(fig.frames[t].data[0].x, dtype=float)  # the first finger's bones, NaN-separated
        assert np.nanmax(np.abs(pred)) > 0 and "synthetic" in fig.frames[t].layout.title.text


def mp4_frames(path) -> int:
    """The number of video frames ffprobe decodes from ``path`` (an error if it is not a video)."""
    done = subprocess.run([FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                           "stream=codec_name,nb_read_frames", "-of", "json", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stream, = json.loads(done.stdout)["streams"]
    return int(stream["nb_read_frames"])


def test_exports_write_gifs_and_an_mp4_or_say_why_not(seqs, feedback, tmp_path, monkeypatch, capsys):
    """With ffmpeg (``make test`` installs Debian's): a GIF and an MP4 of one frame per sequence frame.
    Without it (simulated): the GIF only, and a message that says why."""
    if not (animate.animation.writers.is_available("ffmpeg") and shutil.which(FFPROBE)):
        pytest.fail("ffmpeg is missing, so the MP4 export cannot be tested: run `bash scripts/ensure-test-tools.sh`"
                    " (`make test` does it first), which installs Debian's ffmpeg")
    monkeypatch.setenv("HANDFUSE_FIGURES", str(tmp_path))
    _, model = feedback
    out = sequence_outputs(model, seqs[1])
    T = len(out["probs"])
    done = export_animation(out["joints_mm"], out["joints_true"], out["probs"], out["label"], "anim", "test (synthetic)")
    assert done.gif == tmp_path / "anim.gif" and done.gif.stat().st_size > 0
    assert Image.open(done.gif).n_frames == T
    assert done.mp4 == tmp_path / "anim.mp4" and done.message == "" and done.paths == [done.gif, done.mp4]
    assert done.mp4.read_bytes()[4:8] == b"ftyp", "not an MP4 container"
    assert mp4_frames(done.mp4) == T
    runs = {"feedback": out, "baseline": sequence_outputs(build("baseline", _models(1, False), HALF), seqs[1])}
    both = method_comparison_animation(runs, out["joints_true"], out["label"], "cmp", "test (synthetic)")
    assert both.gif.stat().st_size > 0 and Image.open(both.gif).n_frames == T
    assert both.mp4 == tmp_path / "cmp.mp4" and mp4_frames(both.mp4) == T
    with pytest.raises(ValueError, match="frames"):
        method_comparison_animation({"short": {"joints_mm": out["joints_mm"][:-1], "probs": out["probs"][:-1]}},
                                    out["joints_true"], out["label"], "bad", "t")

    monkeypatch.setattr(animate.animation.writers, "is_available", lambda name: False)  # as if ffmpeg were absent
    capsys.readouterr()
    skipped = export_animation(out["joints_mm"], out["joints_true"], out["probs"], out["label"], "bare", "t (synthetic)")
    assert skipped.mp4 is None and skipped.paths == [tmp_path / "bare.gif"] and not (tmp_path / "bare.mp4").exists()
    assert "MP4 skipped" in skipped.message and "ffmpeg" in skipped.message and skipped.message in capsys.readouterr().out


def test_frame_scrubber_redraws_the_frame_without_rerunning_the_model(seqs, feedback):
    _, model = feedback
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        scrubber = frame_scrubber(model, seqs, sequence=1, source="synthetic")
        fig, frame = scrubber.figure, scrubber.controls["frame"]
        item, T = seqs[1], seqs[1]["length"]
        assert frame.max == T - 1 and len(calls) == 1
        np.testing.assert_array_equal(np.array(fig.data[0].z), item["depth"][0, 0].numpy())
        frame.value = 2
        assert len(calls) == 1, "moving the frame must not re-run the model"
        np.testing.assert_array_equal(np.array(fig.data[0].z), item["depth"][2, 0].numpy())
        out = sequence_outputs(model, item)
        np.testing.assert_allclose(np.array(fig.data[-2].y), np.linalg.norm(out["joints_mm"][2] - out["joints_true"][2],
                                                                          axis=-1), rtol=1e-6)
        assert f"frame 3/{T}" in fig.layout.title.text and "synthetic" in fig.layout.title.text
        assert ACTIONS[item["label"]] in fig.data[-1].y  # the true class is always among the bars
        true_2d = np.array(fig.data[1 + len(animate.BONE_GROUPS)].x, dtype=float)
        px = crop_pixels(out["joints_true"][2], out["centre"][2], HALF, item["depth"].shape[-1])
        np.testing.assert_allclose(np.nanmin(true_2d), px[:, 0].min(), atol=1e-6)
        scrubber.controls["sequence"].value = 4
        assert frame.value == 0 and frame.max == seqs[4]["length"] - 1 and "sequence 4" in fig.layout.title.text
    finally:
        hook.remove()
