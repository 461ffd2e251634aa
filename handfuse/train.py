"""The one training loop: ``fit(model, task, cfg, run_dir)``.

The notebooks, the CLI and the tests all call this function.  It is plain on
purpose: a task (``handfuse.tasks``) says how to draw batches, compute a loss
and evaluate; the loop does the rest:

* a validation split held out from the training split drives early stopping
  and model selection; the test split is evaluated once, at the end, with the
  selected weights;
* seeded per epoch (shuffling, augmentation and dropout draw from
  ``seed, epoch``), so the same seed gives the same metrics on CPU and a run
  resumed from its last epoch checkpoint lands on the same result;
* device-agnostic: CPU by default, ``cuda`` with bf16 autocast; on CUDA batches go from
  pinned memory without blocking and the loss is read once per epoch, so the host
  assembles the next batch while the GPU works (``tests/test_cuda.py``);
* ``graphs`` (CUDA only; nothing changes on CPU): fixed-shape steps replayed as CUDA graphs
  (:mod:`handfuse.graphs`), the task's crops kept on the GPU when they fit;
* data-parallel under ``torchrun`` (:mod:`handfuse.distributed`): DDP, each rank its
  ``DistributedSampler`` shard of every global batch, rank 0 alone writing;
* checkpoints written atomically (temporary file, fsync, rename) and loaded
  with ``torch.load(weights_only=True)``; each holds the resolved config;
* ``tqdm.auto`` progress, and a per-epoch history returned for plotting.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, graphs
from .atomic import atomic_path, write_json
from .errors import ConfigError
from .errors import check as _check

CHECKPOINT = "last.pt"
BEST = "best.pt"
RESULT = "result.json"
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 8  # epochs without validation improvement before stopping
    val_fraction: float = 0.15  # of the training sequences, per class, held out for validation
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, on CUDA only (never on CPU, where bf16 is slow: see docs/benchmarks.md)
    max_batches: int | None = None  # cap per epoch (tests, smoke runs)
    compile: bool = False  # torch.compile the training forward (costs minutes cold; evaluation stays eager)
    # CUDA graphs for fixed-shape steps and evaluation (handfuse.graphs), crops resident on the GPU when they
    # fit; CUDA only: on CPU (and under torchrun) it changes nothing
    graphs: bool = False
    schedule: str = "constant"  # learning rate per epoch: "constant", or "cosine" (lr down to 0 over `epochs`)

    def __post_init__(self):
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "a positive learning rate")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.patience >= 1, "train.patience", self.patience, "an integer >= 1")
        _check(0 < self.val_fraction < 1, "train.val_fraction", self.val_fraction, "a fraction in (0, 1)")
        _check(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), "train.device", self.device,
               "'cpu', 'cuda' or 'cuda:N'")
        _check(self.max_batches is None or self.max_batches >= 1, "train.max_batches", self.max_batches, "None or >= 1")
        _check(self.schedule in SCHEDULES, "train.schedule", self.schedule, f"one of {SCHEDULES}")
        _check(isinstance(self.graphs, bool), "train.graphs", self.graphs, "True or False")
        _check(not (self.graphs and self.compile), "train.graphs", self.graphs,
               "False with train.compile = True (torch.compile has its own CUDA graphs: mode='reduce-overhead')")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of one epoch: a pure function of the epoch, so a resumed run needs no state."""
        if self.schedule == "cosine":  # half a cosine, from lr at epoch 0 towards 0 after the last epoch
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr


class Task(Protocol):
    """What the loop needs from a task (see ``handfuse.tasks`` for the HPE and HAR ones)."""

    metric: str  # name of the selection metric, e.g. "error_mm" or "accuracy"
    higher_is_better: bool

    def batches(self, split: str, epoch: int, cfg: TrainConfig) -> Iterable[dict]: ...
    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...
    def evaluate(self, model: torch.nn.Module, split: str, cfg: TrainConfig) -> dict[str, Any]: ...


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val metrics, seconds
    best_epoch: int = -1
    val: dict = field(default_factory=dict)  # validation metrics of the selected weights
    test: dict = field(default_factory=dict)  # test metrics of the selected weights, computed once
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: str = ""  # the run's folder (its checkpoints and result.json), if it has one


def recorded(cfg: TrainConfig) -> dict:
    """``asdict(cfg)`` as run folders, checkpoints and results record it: ``graphs`` only where it
    takes effect (on, on CUDA), so that a run where it changes nothing keeps the folder it had before
    the option existed."""
    record = asdict(cfg)
    if not (cfg.graphs and cfg.device.startswith("cuda")):
        del record["graphs"]
    return record


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("train.device", name, "'cpu': CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int, epoch: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch): each epoch is reproducible on its own."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A torch.Generator for one epoch's shuffling and augmentation, from (seed, epoch, salt)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1)[0]))


def autocast(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on CUDA when ``enabled`` (``cache=False``: no cast weights kept between ops, as
    CUDA graph captures need); never on CPU."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return nullcontext()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (:func:`handfuse.atomic.atomic_path`): a write that fails (a full disk makes
    ``torch.save`` fail with a bare "unexpected pos") leaves ``path`` as it was and raises one OSError
    that names ``path`` and the disk's free space."""
    with atomic_path(path, "the checkpoint", errors=(OSError, RuntimeError)) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: say which file and why
        raise ValueError(f"{path}: not a handfuse checkpoint that loads safely ({type(e).__name__}: {e})") from None


def finished(run_dir: Path) -> bool:
    """Whether a run folder holds a finished run (its result and best weights): :func:`fit` only loads it."""
    return (run_dir / RESULT).is_file() and (run_dir / BEST).is_file()


def adam(params, lr: float = 1e-3, weight_decay: float = 0.0, capturable: bool = False) -> torch.optim.Adam:
    """The training loop's optimiser: Adam with torch's fused kernel, one pass over each parameter
    instead of a dozen small ops per tensor, which makes a CPU training step faster than the default
    single-tensor Adam (docs/benchmarks.md); the updates agree to float rounding
    (``tests/test_train.py``).  ``capturable``: its step count on the GPU, so that a CUDA graph can hold it."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True, capturable=capturable)


def fit(model: torch.nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path | None = None,
        config: dict | None = None, progress: bool = True) -> FitResult:
    """Train ``model`` on ``task``; resume from ``run_dir/last.pt`` if it exists.

    ``config`` is the resolved configuration of the whole run (model, data, training);
    it is stored in every checkpoint and in ``result.json``.  A finished run found in
    ``run_dir`` is not trained again: its result is loaded and returned."""
    rank, world = distributed.setup(cfg.device)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    main = rank == 0
    run_dir = Path(run_dir) if run_dir is not None else None
    config = {**(config or {}), "train": recorded(cfg), **({"processes": world} if world > 1 else {})}
    if run_dir is not None and main:  # temporary files of a killed write: never a checkpoint
        for stale in run_dir.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
    if run_dir is not None and finished(run_dir):
        done = json.loads((run_dir / RESULT).read_text())
        if done.get("config") == _jsonable(config):
            model.load_state_dict(load_checkpoint(run_dir / BEST)["model"])
            return FitResult(**{**done, "run_dir": str(run_dir)})
    model.to(device)
    step = _Loss(model, task)  # forward(batch) = task.loss(model, batch): what DDP and compile wrap
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step = torch.compile(step)  # costs minutes cold; evaluation stays eager
    graphed = graphs.active(cfg.graphs, device, world)
    opt = adam((p for p in model.parameters() if p.requires_grad), lr=cfg.lr, weight_decay=cfg.weight_decay,
               capturable=graphed)
    result = FitResult(config=_jsonable(config), run_dir=str(run_dir or ""))
    start_epoch, best_state, stale = 0, None, 0
    best, best_val = -math.inf, None  # best_val: the selected epoch's validation scores, if this call computed them
    if run_dir is not None and (run_dir / CHECKPOINT).is_file():
        ck = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
        if ck["config"] != json.dumps(result.config, sort_keys=True):
            raise ValueError(f"{run_dir / CHECKPOINT}: was written with another configuration; use another run folder")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best, stale = ck["epoch"] + 1, ck["best"], ck["stale"]
        result.history, result.best_epoch = json.loads(ck["history"]), ck["best_epoch"]
        best_state = ck["best_model"]
    train_step, ungraph = _stepper(model, task, step, opt, device, cfg, graphed)
    sign = 1.0 if task.higher_is_better else -1.0
    bar = tqdm(range(start_epoch, cfg.epochs), desc=type(model).__name__, unit="epoch", disable=not (progress and main),
               initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        if stale >= cfg.patience:
            break
        seed_everything(cfg.seed, epoch)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        model.train()
        losses, e0, waited = [], time.perf_counter(), 0.0
        for batch, wait in _waited(task.batches("train", epoch, cfg)):
            waited += wait  # the model idles while the next batch is assembled (and augmented)
            losses.append(train_step(to_device(batch, device)))  # read after the epoch: .item() here would wait for the GPU
        val = task.evaluate(model, "val", cfg)
        score = sign * val[task.metric]
        improved = score > best
        if improved:
            best, stale, result.best_epoch, best_val = score, 0, epoch, val
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        train_loss = float(np.mean(torch.stack(losses).tolist())) if losses else float("nan")  # one copy from the GPU
        if world > 1:  # log the mean over ranks, not rank 0's share
            t = torch.tensor([train_loss], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            train_loss = float(t) / world
        result.history.append({"epoch": epoch, "train_loss": train_loss, "lr": cfg.lr_at(epoch),
                               **{f"val_{k}": v for k, v in val.items() if np.isscalar(v)},
                               "seconds": time.perf_counter() - e0, "data_seconds": waited})
        bar.set_postfix(train_loss=f"{result.history[-1]['train_loss']:.4f}", **{task.metric: f"{val[task.metric]:.3f}"})
        if run_dir is not None and main:
            save_checkpoint(run_dir / CHECKPOINT, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
                "stale": stale, "best_epoch": result.best_epoch, "best_model": best_state,
                "history": json.dumps(result.history), "config": json.dumps(result.config, sort_keys=True)})
        distributed.barrier()  # no rank runs ahead of a checkpoint it might need to resume from
    bar.close()
    ungraph()
    if best_state is not None:
        model.load_state_dict(best_state)
    # the selected weights' validation scores: those of their epoch (evaluation is deterministic), or
    # computed again when that epoch ran before a resume
    result.val = best_val if best_val is not None else task.evaluate(model, "val", cfg)
    result.test = task.evaluate(model, "test", cfg)  # once, with the selected weights
    result.seconds = sum(h["seconds"] for h in result.history)  # training time over all epochs, resumes included
    if run_dir is not None and main:
        save_checkpoint(run_dir / BEST, {"model": model.state_dict(), "config": json.dumps(result.config, sort_keys=True)})
        _write_json(run_dir / RESULT, asdict(result))
    distributed.barrier()
    return result


def _stepper(model, task, step, opt, device: torch.device, cfg: TrainConfig, graphed: bool):
    """(train_step, undo): ``train_step(batch) -> detached loss`` runs forward (``step``, under
    autocast), backward and the optimiser step; with ``graphed`` it is replayed as a CUDA graph for a
    fixed-shape task (``task.graph_step``), else the model's fixed-shape calls are
    (:func:`handfuse.graphs.fixed_shape_calls`).  ``undo()`` drops the graphs."""
    def eager(batch: dict) -> torch.Tensor:
        with autocast(device, cfg.amp, cache=not graphed):  # a capture refuses autocast's weight cache
            loss = step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if not graphed:
        return (lambda batch: eager(batch).detach()), (lambda: None)
    if getattr(task, "graph_step", False):
        return graphs.StepGraphs(model, opt, eager), (lambda: None)
    undo = [graphs.graph_calls(m, name) for m, name in graphs.fixed_shape_calls(model)]
    return (lambda batch: eager(batch).detach()), (lambda: [u() for u in undo])


def _waited(batches: Iterable[dict]):
    """(batch, seconds spent producing it) for each batch of ``batches``."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - t0


class _Loss(torch.nn.Module):
    """``task.loss(model, batch)`` as a module, so that DDP sees every parameter the loss uses."""

    def __init__(self, model: torch.nn.Module, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict) -> torch.Tensor:
        return self.task.loss(self.model, batch)


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A batch's tensors on ``device``.  To CUDA they go from pinned memory without blocking, so the
    host assembles the next batch while the GPU still works on this one; tensors already on
    ``device`` are passed as they are."""
    device = torch.device(device)
    pin = device.type == "cuda"

    def move(v):
        if not torch.is_tensor(v) or v.device == device:
            return v
        return (v.pin_memory() if pin and v.device.type == "cpu" else v).to(device, non_blocking=pin)
    return {k: move(v) for k, v in batch.items()}


def run_digest(config: dict) -> str:
    """8 hex digits naming a run's resolved configuration with every ``seed`` left out (the seed is
    named on its own), so that a changed preset or option gets a fresh run folder, never a clash."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "seed"}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return hashlib.sha256(json.dumps(strip(_jsonable(config)), sort_keys=True).encode()).hexdigest()[:8]


def _jsonable(obj):
    """Round-trip through JSON so that a stored config compares equal to a fresh one."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _write_json(path: Path, obj) -> None:
    write_json(path, _jsonable(obj), indent=1)
