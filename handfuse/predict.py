"""Applying a trained pipeline to your own recording: ``python -m handfuse.predict DEPTH_DIR --out DIR``.

DEPTH_DIR is any folder of FPHA-named depth frames, ``depth_0000.png``, ``depth_0001.png``, ... (640 x 480,
16-bit, mm, as in FPHA's ``Video_files/<subject>/<action>/<n>/depth/``).  A fusion method fine-tuned by
the workbook (:func:`load_pipeline`: default the trained baseline of the cpu preset, seed 0, found
under the runs folder the workbook trains into; nothing is trained here) runs on the whole sequence:

1. every frame is read with :func:`handfuse.fpha.read_depth_png` (a bad frame is one DataError naming it);
2. the hand is found in every frame from depth alone (:func:`handfuse.localise.locate_sequence`) by the
   localiser the workbook's depth-centred test sets use: the tracker with the preset's learned refinement
   (seed :data:`~handfuse.finetune.DEPTH_LOCALISER_SEED`, trained on the same data, found beside the
   method's weights), its learned whole-frame detector overruling the tracker only in frames without a
   table plane unless ``detector`` (``--detector``) says otherwise: trained on the data the weights were, it
   can be confidently wrong on other scenes (:data:`handfuse.localise.DETECTOR_ON_RECORDINGS`); and
   tracked forward and backward unless ``both_ways=False`` (``--forward-only``), so that a track that starts on
   the wrong object is put right (:data:`handfuse.localise.BOTH_WAYS_ON_RECORDINGS`); ``refine=False``
   (``--no-refine``) runs the tracker alone, whose centres lie several times farther from the hand
   (docs/benchmarks.md);
3. each frame is cropped in the preset's metric cube around its centre (:func:`handfuse.preprocess.crop`,
   stored as float16 like the crop cache the models were trained on) and the method predicts the pose
   of every frame and its action after every frame.

**Lost frames.**  A frame where the localiser finds no hand is never silently given another frame's
centre.  ``on_lost="fallback"`` (the default) crops it around the centre of the nearest located frame
in time (the earlier one on a tie) and marks it ``fallback`` in ``centres.csv``, in ``predict.json``
(``fallback_frames``) and in the animation; ``on_lost="refuse"`` stops with one DataError listing the
lost frames.  A sequence with no located frame is always refused.

It writes into ``out`` (:data:`FILES`): the poses as FPHA's ``skeleton.txt`` (frame index, then 21 x 3
camera-frame mm; :func:`handfuse.fpha.read_skeleton_file` reads it), the action probabilities after
every frame (``actions.csv``: ``frame`` then the 45 actions of :data:`handfuse.skeleton.ACTIONS`), the
centre of every frame (``centres.csv``; drawn on the frames in ``centres.png``), an animation of crop,
pose and action (``animation.gif``, and ``animation.mp4`` where ffmpeg exists) and ``predict.json``: the
method, its weights (run folders, the localiser's among them), the data they were trained on, the
localiser, how many frames were located, the sequence's predicted action and the recording's source
("your recording", unless the folder is a sequence of a synthetic or FPHA data root).  For the ensemble
the per-frame actions are its first pass's (the second pass only starts once the whole sequence is
seen); the sequence's action is the ensemble's.

A notebook calls :func:`predict_folder`, or :func:`load_pipeline` once and ``predict_folder(...,
pipeline=p)`` per recording.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .camera import FPHA_DEPTH, Intrinsics
from .config import Preset, get_preset
from .errors import ConfigError, DataError, check
from .finetune import DEPTH_LOCALISER_SEED, Pretrained, build_method, finetune_run, pretrained_requests, resolved_config
from .fpha import (FPHA, POSE_DIR, VIDEO_DIR, depth_frame_indices, read_depth_png, read_skeleton_file,
                   write_skeleton_file)
from .localise import (BOTH_WAYS_ON_RECORDINGS, DETECTOR_ON_RECORDINGS, LOCATED, Refiner, add_localiser_arguments,
                       centre_sheet, load_refiner, locate_sequence, refiner_run, sheet_step, sheet_thumbnail,
                       write_centre_sheet)
from .methods import FusionConfig, headline, method_config
from .methods.common import see_labels
from .models.registry import DEFAULT_HAR, DEFAULT_HPE, har_entry, hpe_entry
from .paths import runs_dir, synthetic_root
from .preprocess import crop
from .runs import code_version, finished, models_dir, weights_digest
from .skeleton import ACTIONS
from .standalone import PRETRAIN
from .train import BEST, RESULT, FitResult, load_checkpoint

FILES = {"skeleton": "skeleton.txt", "actions": "actions.csv", "centres": "centres.csv", "sheet": "centres.png",
         "gif": "animation.gif", "mp4": "animation.mp4", "record": "predict.json"}
ON_LOST = ("fallback", "refuse")
FALLBACK = "fallback"
YOUR_RECORDING = "your recording"


class WeightsNotFound(FileNotFoundError):
    """The trained weights a prediction needs are not on disk; the message names the command that trains them."""


@dataclass
class Pipeline:
    """A fine-tuned fusion method loaded for prediction (:func:`load_pipeline`), with where it came from:
    ``runs`` maps each part (``fused``, ``hpe``, ``hpe_film``, ``har``, and ``localiser`` where there is a
    ``refiner``) to its run folder and ``digests`` to a digest of that folder's ``best.pt``; ``data_root``
    and ``data_source`` say what it was trained on.  ``refiner``: the localiser's learned refinement
    (None: the tracker alone)."""

    model: nn.Module
    method: str
    config: FusionConfig
    preset: Preset
    seed: int
    hpe_model: str = DEFAULT_HPE
    har_model: str = DEFAULT_HAR
    runs: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    data_root: str = ""
    data_source: str = ""
    refiner: Refiner | None = None

    def record(self) -> dict:
        """What ``predict.json`` says about the weights."""
        return {"method": self.method, "options": asdict(self.config), "preset": self.preset.name, "seed": self.seed,
                "hpe_model": self.hpe_model, "har_model": self.har_model, "weights": self.runs,
                "weights_digests": self.digests,
                "trained_on": {"data_source": self.data_source, "data_root": self.data_root}}


# ----------------------------------------------------------------------------- weights


def train_command(method: str, preset: str, seed: int, options: dict | None = None, hpe_model: str = DEFAULT_HPE,
                  har_model: str = DEFAULT_HAR, runs: str | Path | None = None, data_root: str | Path | None = None,
                  device: str = "cpu") -> str:
    """The ``python -m handfuse train fusion ...`` command that trains (pre-training included) exactly the
    weights :func:`load_pipeline` looks for with these arguments; options equal to the method's
    registered defaults are left out."""
    options = dict(options or {})
    defaults = method_config(method, film=get_preset(preset).film)
    words = ["python -m handfuse train fusion", f"--preset {preset}", f"--method {method}", f"--seed {seed}"]
    words += [f"--hpe-model {hpe_model}"] * (hpe_model != DEFAULT_HPE)
    words += [f"--har-model {har_model}"] * (har_model != DEFAULT_HAR)
    words += ["--attention"] * bool(options.pop("attention", False))
    sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(options.items())
            if getattr(defaults, k) != v]
    words += [f"--set {' '.join(sets)}"] * bool(sets)
    words += [f"--data-root {data_root}"] * (data_root is not None) + [f"--runs {runs}"] * (runs is not None)
    words += [f"--device {device}"] * (device != "cpu")
    return " ".join(words)


def load_pipeline(method: str = "baseline", runs: str | Path | None = None, preset: str = "cpu", seed: int = 0,
                  device: str = "cpu", data_root: str | Path | None = None, options: dict | None = None,
                  hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR,
                  trained_on: str | None = None, refine: bool = True) -> Pipeline:
    """Method ``method`` as the workbook fine-tuned it: its headline options
    (:data:`handfuse.methods.HEADLINE`) overridden by ``options``, the pre-trained models of ``seed``,
    on ``data_root`` (default the preset's synthetic benchmark), found under ``runs`` (the runs folder:
    default ``$HANDFUSE_RUNS`` or ``runs/``; the weights are in ``<runs>/<preset>/models``), loaded on ``device``.

    The run folders are those the training code names (:func:`handfuse.finetune.finetune_run`,
    :func:`handfuse.standalone.hpe_run`, ``har_run``), so they are the weights trained on ``trained_on``
    (``"cpu"`` or ``"cuda"``; default: ``device``'s kind) with this very code.  With ``refine`` the
    localiser's learned refinement is loaded too: the run the depth-centred test sets of this data use
    (:func:`handfuse.localise.refiner_run`, seed :data:`~handfuse.finetune.DEPTH_LOCALISER_SEED`, trained
    on CPU).  Nothing is trained: missing weights raise :class:`WeightsNotFound` naming the command that
    trains them."""
    from .reproduce import check_device, check_seed

    check_seed(seed, "seed")
    check_device(device, "device")
    P = get_preset(preset)
    trained = trained_on or ("cuda" if device.startswith("cuda") else "cpu")
    check(trained in ("cpu", "cuda"), "trained_on", trained_on, "'cpu' or 'cuda': where the weights were trained")
    hpe_entry(hpe_model), har_entry(har_model)  # unknown models refused by name
    chosen = headline(method, **(options or {}))
    cfg = resolved_config(method, P, chosen)  # unknown or impossible options refused by name
    check(cfg.eval_feed != "true", "eval_feed", cfg.eval_feed, "anything but 'true': a recording has no true action")
    command = train_command(method, preset, seed, chosen, hpe_model, har_model, runs, data_root, trained)
    root = models_dir(P, Path(runs) / preset / "models" if runs is not None else None)
    fpha = _training_data(preset, data_root, command)
    parts = []
    for kind, kwargs in pretrained_requests(seed, cfg.attention, cfg.film, hpe_model, har_model, cfg.hpe_feed):
        folder, _, _, cfg_model = PRETRAIN[kind][1](fpha, P, device=trained, root=root, **kwargs)
        net = (hpe_entry if kind == "hpe" else har_entry)(kwargs["model"]).build(cfg_model)
        parts.append((net, _load(folder, net, f"pre-trained {kind.upper()} {kwargs}", command)))
    (hpe, r_hpe), (har, r_har) = parts[:2]
    hpe_film, r_film = parts[2] if len(parts) > 2 else parts[0]
    models = Pretrained(hpe, hpe_film, har, {"hpe": r_hpe, "hpe_film": r_film, "har": r_har}, hpe_model, har_model)
    folder = finetune_run(method, models, fpha, P, cfg, seed, trained, root)[0]
    model = build_method(method, models, P, cfg, seed)
    fused = _load(folder, model, f"fine-tuned {method}", command)
    from .plots import data_source

    done = {"fused": fused, **models.results}
    refiner = _load_refiner(fpha, P, root, preset, runs, data_root) if refine else None
    if refiner is not None:
        done["localiser"] = _result(Path(refiner.source))
    return Pipeline(model.to(device).eval(), method, cfg, P, seed, hpe_model, har_model,
                    runs={k: r.run_dir for k, r in done.items()},
                    digests={k: weights_digest(r) for k, r in done.items()},
                    data_root=str(fpha.root), data_source=data_source(fpha.root), refiner=refiner)


def _load_refiner(fpha: FPHA, P: Preset, root: Path, preset: str, runs: str | Path | None,
                  data_root: str | Path | None) -> Refiner:
    """The localiser's learned refinement the depth-centred test sets of ``fpha`` use, from ``root``."""
    folder = refiner_run(fpha, P, DEPTH_LOCALISER_SEED, "cpu", root)[0]
    if not finished(folder):
        command = " ".join(["python -m handfuse.localise train", f"--preset {preset}"]
                           + [f"--data-root {data_root}"] * (data_root is not None)
                           + [f"--runs {runs}"] * (runs is not None))
        raise WeightsNotFound(f"{folder}: no trained weights of the localiser's learned refinement (the one the"
                              " depth-centred test sets use; without it the hand's centre lies several times"
                              f" farther off). Train them with:\n  {command}\nor predict with the tracker alone"
                              " (--no-refine, refine=False)")
    return load_refiner(folder)


def _training_data(preset: str, data_root: str | Path | None, command: str) -> FPHA:
    """The data the weights were trained on (its contents name their run folders); the preset's synthetic
    benchmark by default, which must already exist: nothing is generated here."""
    if data_root is not None:
        from .reproduce import check_data_root

        check_data_root(data_root, "data_root")
        return FPHA(data_root)
    root = synthetic_root(preset)
    if not root.is_dir():
        raise WeightsNotFound(f"{root}: the synthetic benchmark the {preset} preset's weights are trained on does"
                              " not exist, so neither do its weights; train them (this makes the data too) with:"
                              f"\n  {command}")
    from .paths import ensure_synthetic

    return FPHA(ensure_synthetic(preset))  # refuses a folder made with other parameters


def _load(folder: Path, net: nn.Module, what: str, command: str) -> FitResult:
    """Load a finished run's selected weights (``best.pt``, ``weights_only=True``) into ``net``; its result."""
    if not finished(folder):
        others = sorted(p.name for p in folder.parent.glob(folder.name.split("-seed")[0].rsplit("-", 1)[0] + "-*")
                        if finished(p)) if folder.parent.is_dir() else []
        hint = (f" ({len(others)} finished run(s) of that kind there, made with other data, options, seed or code:"
                f" {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})") if others else ""
        raise WeightsNotFound(f"{folder}: no trained weights of the {what} (not a finished run){hint}. Run folders are"
                              f" named by the preset, seed, options, training data and the code under handfuse/."
                              f" Train them with:\n  {command}")
    net.load_state_dict(load_checkpoint(folder / BEST)["model"])
    return _result(folder)


def _result(folder: Path) -> FitResult:
    """A finished run's result (its ``result.json``), naming the folder."""
    return FitResult(**{**json.loads((folder / RESULT).read_text()), "run_dir": str(folder)})


# ----------------------------------------------------------------------------- input


def depth_paths(depth_dir: str | Path) -> list[Path]:
    """The frames ``depth_0000.png`` ... ``depth_{T-1}.png`` of a folder, in order.  A folder that is missing,
    holds no such frame, a misnamed PNG or a gap in the numbering is one DataError naming the path."""
    folder = Path(depth_dir)
    if not folder.is_dir():
        raise DataError(folder, "not a folder of depth frames (give the folder that holds depth_0000.png, ...)")
    indices = depth_frame_indices(folder)
    if not indices:
        raise DataError(folder, "no depth frames here: expected depth_0000.png, depth_0001.png, ... (16-bit PNG, mm),"
                                " as in FPHA's Video_files/<subject>/<action>/<n>/depth/")
    gap = next((t for t, i in enumerate(indices) if i != t), None)
    if gap is not None:
        raise DataError(folder / f"depth_{gap:04d}.png", "depth frame missing: the frames must run from depth_0000.png"
                        f" without a gap ({len(indices)} found, up to depth_{indices[-1]:04d}.png)")
    return [folder / f"depth_{t:04d}.png" for t in indices]


def recording_source(depth_dir: str | Path) -> tuple[str, Path | None]:
    """What the frames are: ``"your recording"``, unless the folder is
    ``<root>/Video_files/<subject>/<action>/<n>/depth`` of a root that :func:`handfuse.plots.data_source`
    calls synthetic or FPHA; then that, with the sequence's ``skeleton.txt`` (its annotation; None for
    your recording)."""
    from .plots import data_source

    d = Path(depth_dir).resolve()
    if d.name != "depth" or len(d.parents) < 5 or d.parents[3].name != VIDEO_DIR:
        return YOUR_RECORDING, None
    root, key = d.parents[4], d.parent.relative_to(d.parents[3]).as_posix()
    source = data_source(root)
    if source not in ("synthetic", "FPHA"):
        return YOUR_RECORDING, None
    name = "synthetic benchmark (not FPHA)" if source == "synthetic" else "FPHA"
    return f"{name}: {root}, sequence {key}", root / POSE_DIR / key / "skeleton.txt"


def crop_centres(centres: np.ndarray, status: list[str], on_lost: str, paths: list[Path], localiser: str
                 ) -> tuple[np.ndarray, list[str], list[int]]:
    """The crop centre (T, 3) mm of every frame, its status (``located`` or ``fallback``) and the frame whose
    centre it is, under the lost-frame policy ``on_lost`` (module docstring).  A lost frame (status not
    located, or a non-finite centre) never keeps a centre of its own."""
    ok = [t for t, (c, s) in enumerate(zip(centres, status)) if s == LOCATED and np.all(np.isfinite(c))]
    lost = [t for t in range(len(paths)) if t not in set(ok)]
    named = ", ".join(p.name for p in [paths[t] for t in lost][:10]) + (", ..." if len(lost) > 10 else "")
    if not ok:
        raise DataError(paths[0].parent, f"no hand found in any of the {len(paths)} frames (localiser: {localiser})")
    if lost and on_lost == "refuse":
        raise DataError(paths[0].parent, f"no hand found in {len(lost)} of {len(paths)} frames: {named} (localiser:"
                                         f" {localiser}); on_lost='fallback' (--on-lost fallback) crops them around the"
                                         " nearest located frame's centre and marks them")
    found = np.asarray(ok)  # ascending: argmin takes the earlier of two equally near frames
    source = [t if t in set(ok) else int(found[np.argmin(np.abs(found - t))]) for t in range(len(paths))]
    return (np.asarray(centres, np.float32)[source], [LOCATED if s == t else FALLBACK for t, s in enumerate(source)],
            source)


# ----------------------------------------------------------------------------- prediction


def run_pipeline(model: nn.Module, crops: np.ndarray, centres: np.ndarray, device: str | torch.device = "cpu") -> dict:
    """A fusion method on one whole sequence, in eval mode under ``torch.inference_mode``: ``crops`` (T, S, S)
    normalised, ``centres`` (T, 3) mm -> numpy ``joints_mm`` (T, 21, 3), ``probs`` (T, 45) (the action
    after each frame, ``softmax(step_logits)``) and ``sequence_probs`` (45,) (``softmax(logits)``)."""
    T = len(crops)
    depth = torch.from_numpy(np.ascontiguousarray(crops, np.float32))[None, :, None].to(device)  # (1, T, 1, S, S)
    centre = torch.from_numpy(np.ascontiguousarray(centres, np.float32))[None].to(device)  # (1, T, 3)
    mask = torch.ones(1, T, dtype=torch.bool, device=device)  # (1, T)
    model.eval()
    with torch.inference_mode():
        see_labels(model, None)  # no true action: a recording has none
        out = model(depth, centre, mask)
    return {"joints_mm": out["joints_mm"][0].double().cpu().numpy(),  # (T, 21, 3)
            "probs": torch.softmax(out["step_logits"][0].double(), -1).cpu().numpy(),  # (T, 45)
            "sequence_probs": torch.softmax(out["logits"][0].double(), -1).cpu().numpy()}  # (45,)


@dataclass
class Prediction:
    """What :func:`predict_folder` found and wrote: ``joints_mm`` (T, 21, 3), ``probs`` (T, 45),
    ``sequence_probs`` (45,), ``action`` (the sequence's predicted action), ``status`` per frame
    (``located`` / ``fallback``), ``files`` (name -> path, only those written) and ``record`` (``predict.json``)."""

    joints_mm: np.ndarray
    probs: np.ndarray
    sequence_probs: np.ndarray
    action: str
    status: list[str]
    files: dict[str, Path]
    record: dict


def predict_folder(depth_dir: str | Path, out: str | Path, method: str = "baseline", runs: str | Path | None = None,
                   preset: str = "cpu", seed: int = 0, device: str = "cpu", data_root: str | Path | None = None,
                   options: dict | None = None, hpe_model: str = DEFAULT_HPE, har_model: str = DEFAULT_HAR,
                   trained_on: str | None = None, on_lost: str = "fallback", animate: bool = True, fps: float = 10.0,
                   force: bool = False, pipeline: Pipeline | None = None, intrinsics: Intrinsics = FPHA_DEPTH,
                   progress: bool = True, refine: bool = True, detector: str = DETECTOR_ON_RECORDINGS,
                   both_ways: bool = BOTH_WAYS_ON_RECORDINGS) -> Prediction:
    """Run a trained pipeline on a folder of FPHA-named depth frames and write its outputs into ``out``
    (module docstring).  ``pipeline`` (from :func:`load_pipeline`) is used as given; otherwise it is loaded
    from ``method``, ``runs``, ``preset``, ``seed``, ``device``, ``data_root``, ``options``, the models and
    ``trained_on`` and ``refine`` (:func:`load_pipeline`).  ``detector``: where the refiner's learned detector
    may overrule the tracker, and ``both_ways``: whether the hand is tracked backward too
    (:func:`handfuse.localise.locate_sequence`).  An ``out`` that holds the predictions
    of another folder or other weights is refused unless ``force``."""
    t0 = time.perf_counter()
    check(on_lost in ON_LOST, "on_lost", on_lost, f"one of {ON_LOST}")
    check(fps > 0, "fps", fps, "frames per second > 0")
    paths = depth_paths(depth_dir)  # the folder's names are checked before any weights are loaded
    if pipeline is None:
        pipeline = load_pipeline(method, runs, preset, seed, device, data_root, options, hpe_model, har_model,
                                 trained_on, refine)
    device = next(pipeline.model.parameters()).device
    out = Path(out)
    record = {"depth_dir": str(Path(depth_dir).resolve()), **pipeline.record()}
    _claim(out, record, force)
    depths = [read_depth_png(p, intrinsics)
              for p in tqdm(paths, desc="reading depth", unit="frame", disable=not progress)]
    pre = pipeline.preset.preprocess
    located = locate_sequence(depths, intrinsics, pre.cube_mm, pipeline.refiner, progress, detector=detector,
                              both_ways=both_ways)
    centres, status, source = crop_centres(located.centres, located.status, on_lost, paths, located.localiser)
    crops = np.stack([crop(d, c, intrinsics, pre.cube_mm, pre.crop) for d, c in zip(depths, centres)])  # (T, S, S)
    crops = crops.astype(np.float16).astype(np.float32)  # as the crop cache stores them for training
    step = sheet_step(len(depths))
    thumbs = {t: sheet_thumbnail(d) for t, d in enumerate(depths) if t % step == 0}
    del depths
    result = run_pipeline(pipeline.model, crops, centres, device)
    action = ACTIONS[int(result["sequence_probs"].argmax())]
    out.mkdir(parents=True, exist_ok=True)
    files = {"skeleton": out / FILES["skeleton"], "actions": out / FILES["actions"], "centres": out / FILES["centres"]}
    write_skeleton_file(files["skeleton"], result["joints_mm"])
    _write_csv(files["actions"], ["frame", *ACTIONS],
               [[t, *(f"{p:.8g}" for p in row)] for t, row in enumerate(result["probs"])])
    _write_csv(files["centres"], ["frame", "centre", "x_mm", "y_mm", "z_mm", "from_frame"],
               [[t, s, *(f"{v:.3f}" for v in c), f] for t, (s, c, f) in enumerate(zip(status, centres, source))])
    data, annotation = recording_source(depth_dir)
    files["sheet"] = out / FILES["sheet"]
    write_centre_sheet(files["sheet"], centre_sheet(thumbs, located, f"{data}: where the crops are centred", intrinsics,
                                                    pre.cube_mm))
    title = f"{pipeline.method} ({pipeline.data_source} training data, {pipeline.preset.name} preset) on {data}"
    if animate:
        from .animate import Exported

        exported: Exported = prediction_animation(crops, centres, result["joints_mm"], result["probs"], status,
                                                  int(result["sequence_probs"].argmax()), out, title, intrinsics,
                                                  pre.cube_mm, fps, progress)
        files["gif"] = exported.gif
        if exported.mp4 is not None:
            files["mp4"] = exported.mp4
    fallback = [t for t, s in enumerate(status) if s == FALLBACK]
    record.update({
        "data_source": data, "frames": len(paths), "located": len(paths) - len(fallback),
        "fallback_frames": fallback, "on_lost": on_lost, "localiser": located.localiser,
        "centre_policy": "a lost frame is cropped around the nearest located frame's centre (the earlier on a tie),"
                         " marked 'fallback' in centres.csv" if on_lost == "fallback" else "lost frames are refused",
        "predicted_action": {"name": action, "label": ACTIONS.index(action),
                             "probability": float(result["sequence_probs"].max())},
        "sequence_probabilities": dict(zip(ACTIONS, map(float, result["sequence_probs"]))),
        "per_frame_actions": "the action after each frame"
                             + (" (the ensemble's first pass)" if pipeline.method == "ensemble" else ""),
        "annotation": _annotation(annotation, result["joints_mm"]),
        "device": str(device), "seconds": round(time.perf_counter() - t0, 2), "code": code_version(),
        "files": {k: p.name for k, p in files.items()}})
    files["record"] = out / FILES["record"]
    files["record"].write_text(json.dumps(record, indent=1) + "\n")  # last: a folder without it is unfinished
    return Prediction(result["joints_mm"], result["probs"], result["sequence_probs"], action, status, files, record)


def _claim(out: Path, record: dict, force: bool) -> None:
    """Refuse an ``out`` whose ``predict.json`` records another input folder or other weights (unless ``force``)."""
    found = out / FILES["record"]
    if force or not found.is_file():
        return
    old = json.loads(found.read_text())
    keys = ("depth_dir", "method", "options", "preset", "seed", "weights")
    differ = [k for k in keys if old.get(k) != json.loads(json.dumps(record.get(k)))]
    if differ:
        raise FileExistsError(f"{found}: holds the predictions of another run (other {', '.join(differ)});"
                              " choose another --out, or pass --force to overwrite")


def _annotation(skeleton: Path | None, joints_mm: np.ndarray) -> dict | None:
    """For a sequence of a known data root: its ``skeleton.txt`` and the mean joint error (mm) against it."""
    if skeleton is None:
        return None
    try:
        truth = read_skeleton_file(skeleton)
    except DataError as e:
        return {"skeleton": str(skeleton), "problem": str(e)}
    if truth.shape != joints_mm.shape:
        return {"skeleton": str(skeleton), "problem": f"{len(truth)} annotated frames, {len(joints_mm)} depth frames"}
    return {"skeleton": str(skeleton), "error_mm": float(np.linalg.norm(joints_mm - truth, axis=-1).mean())}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------- animation


def prediction_animation(crops: np.ndarray, centres: np.ndarray, joints_mm: np.ndarray, probs: np.ndarray,
                         status: list[str], action: int, out: Path, title: str, intrinsics: Intrinsics = FPHA_DEPTH,
                         cube_mm: float = 250.0, fps: float = 10.0, progress: bool = True):
    """``out/animation.gif`` (and ``.mp4`` where matplotlib finds ffmpeg): per frame, the crop (T, S, S) with the
    predicted pose (T, 21, 3) mm projected on it, the pose in 3D, and the probabilities (T, 45) after the frame
    of the predicted action ``action`` (dark) and the five others most probable on average.  A fallback frame
    says so.  Returns :class:`handfuse.animate.Exported`."""
    import matplotlib.pyplot as plt
    from matplotlib import animation

    from .animate import OTHER_COLOUR, TRUE_COLOUR, Exported, _set_bones, _skeleton_axes, cube_ranges, top_classes
    from .plots import draw_skeleton_2d
    from .preprocess import joints_to_crop_pixels

    T, size = len(crops), crops.shape[-1]
    classes = top_classes(probs, action)
    fig = plt.figure(figsize=(12, 4.2))
    grid = fig.add_gridspec(1, 3, width_ratios=[0.8, 1.1, 1])
    ax_crop = fig.add_subplot(grid[0])
    ax3 = fig.add_subplot(grid[1], projection="3d")
    pred, _ = _skeleton_axes(ax3, cube_ranges(joints_mm))  # no true pose: its lines stay empty
    ax3.set_title("pose (mm), camera frame", fontsize=8)
    axb = fig.add_subplot(grid[2])
    bars = axb.barh(range(len(classes)), probs[0, classes],
                    color=[TRUE_COLOUR if c == action else OTHER_COLOUR for c in classes])
    axb.set_yticks(range(len(classes)), [ACTIONS[c] + (" (predicted)" if c == action else "") for c in classes],
                   fontsize=7)
    axb.invert_yaxis()
    axb.set_xlim(0, 1), axb.set_xlabel("probability after the frame", fontsize=8)
    heading = fig.suptitle("", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.97, top=0.8, wspace=0.45)

    def update(t: int) -> list:
        ax_crop.clear()
        ax_crop.imshow(crops[t], cmap="viridis_r", vmin=-1, vmax=1)
        draw_skeleton_2d(ax_crop, joints_to_crop_pixels(joints_mm[t], centres[t], intrinsics, cube_mm, size))
        ax_crop.set_xlim(-0.5, size - 0.5), ax_crop.set_ylim(size - 0.5, -0.5), ax_crop.set_axis_off()
        ax_crop.set_title(f"crop, centre: {status[t]}", fontsize=8, color="tab:red" if status[t] == FALLBACK else "k")
        _set_bones(pred, joints_mm[t])
        for bar, p in zip(bars, probs[t, classes]):
            bar.set_width(p)
        heading.set_text(f"{title}\nframe {t + 1}/{T}: action after it {ACTIONS[int(probs[t].argmax())]},"
                         f" sequence {ACTIONS[action]}")
        return pred + list(bars) + [heading]

    anim = animation.FuncAnimation(fig, update, frames=T, interval=1000 / fps, blit=False)
    bar = tqdm(total=T, desc="animation", unit="frame", disable=not progress)

    def tick(frame: int, frames: int) -> None:  # matplotlib's progress callback
        bar.update(1)

    gif = out / FILES["gif"]
    anim.save(gif, writer=animation.PillowWriter(fps=fps), progress_callback=tick)
    mp4, message = None, ""
    if animation.writers.is_available("ffmpeg"):
        bar.reset()
        mp4 = out / FILES["mp4"]
        anim.save(mp4, writer=animation.FFMpegWriter(fps=fps), progress_callback=tick)
    else:
        message = f"{FILES['mp4']} skipped because ffmpeg is absent (matplotlib found none); wrote {gif.name} only"
    bar.close()
    plt.close(fig)
    return Exported(gif, mp4, message)


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``predict`` (for ``python -m handfuse.predict`` and ``python -m handfuse predict``)."""
    from .config import PRESETS

    p.add_argument("depth_dir", metavar="DEPTH_DIR",
                   help="a folder of depth_0000.png, depth_0001.png, ... (640x480, 16-bit, mm)")
    p.add_argument("--out", required=True,
                   help="folder for skeleton.txt, actions.csv, centres.csv and .png, animation.gif, predict.json")
    p.add_argument("--method", default="baseline", help="a registered fusion method, fine-tuned (default: baseline)")
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE",
                   help="method options the weights were trained with (default: the workbook's headline options)")
    p.add_argument("--attention", action="store_true", help="the method with the HAR's temporal attention")
    p.add_argument("--hpe-model", default=DEFAULT_HPE, help="the registered pose estimator (deepprior, resnet)")
    p.add_argument("--har-model", default=DEFAULT_HAR, help="the registered action recogniser (lstm, transformer)")
    p.add_argument("--runs", default=None, help="runs folder holding PRESET/models (default runs/ or $HANDFUSE_RUNS)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0, help="the seed of the trained weights")
    p.add_argument("--data-root", default=None,
                   help="the data the weights were trained on (default: the preset's synthetic benchmark)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--trained-on", default=None, choices=["cpu", "cuda"],
                   help="where the weights were trained (default: --device's kind)")
    p.add_argument("--on-lost", default="fallback", choices=ON_LOST,
                   help="a frame where no hand is found: crop it around the nearest located frame's centre and mark"
                        " it (fallback), or stop (refuse)")
    add_localiser_arguments(p, "locate the hand with the tracker alone, without the learned refinement (farther off)")
    p.add_argument("--no-animation", action="store_true", help="skip animation.gif")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second of the animation")
    p.add_argument("--force", action="store_true", help="overwrite an --out that holds another run's predictions")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m handfuse.predict DEPTH_DIR --out DIR ...``: 0 on success, 2 with one ``error:`` line otherwise."""
    parser = argparse.ArgumentParser(prog="python -m handfuse.predict", description=__doc__.split("\n\n")[0])
    args = add_arguments(parser).parse_args(argv)
    try:
        from .__main__ import _check_types, _pairs

        options = _pairs(args.set, "--set", "FusionConfig fields, e.g. --set p_eq=0.9")
        _check_types(FusionConfig, options, "fusion.")
        if args.attention:
            options["attention"] = True
        prediction = predict_folder(args.depth_dir, args.out, args.method, args.runs, args.preset, args.seed,
                                    args.device, args.data_root, options, args.hpe_model, args.har_model,
                                    args.trained_on, args.on_lost, not args.no_animation, args.fps, args.force,
                                    refine=not args.no_refine, detector=args.detector,
                                    both_ways=not args.forward_only)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = prediction.record
    print(f"predict: {r['frames']} frames of {r['data_source']}, {r['located']} located by {r['localiser']}"
          + (f", {len(r['fallback_frames'])} cropped around a fallback centre" if r["fallback_frames"] else ""))
    print(f"predict: {r['method']} ({r['preset']} preset, seed {r['seed']}, trained on {r['trained_on']['data_source']}"
          f" data), weights {r['weights']['fused']}")
    error = (r["annotation"] or {}).get("error_mm")
    print(f"predict: sequence action {prediction.action} ({r['predicted_action']['probability']:.2f})"
          + (f"; {error:.1f} mm from the sequence's annotation" if error is not None else ""))
    for path in prediction.files.values():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
