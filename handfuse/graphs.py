"""CUDA graphs for fixed-shape work (``TrainConfig.graphs``, issue 24): fewer kernel launches.

A paper-sized HPE training step launches about 840 kernels, and on an H200 the host takes longer to
launch them than the GPU takes to run them (docs/gpu.md).  A CUDA graph records a step's kernels once
and replays them with one launch.  A graph holds fixed shapes and fixed memory, so:

* :class:`StepGraphs`: a whole training step (zero_grad, forward, backward, optimiser step) per batch
  shape, for tasks whose batches all have one shape (``graph_step = True``: HPE pre-training drops
  the ragged last batch).  The warm-up steps a capture needs are undone (weights, buffers, optimiser
  state, random state), so a graphed run follows the eager run's trajectory (``tests/test_cuda.py``).
* :func:`graph_calls`: one module call inside an eager step, forward and backward
  (``torch.cuda.make_graphed_callables``): the HPE over every valid frame of a fine-tuning batch
  (:func:`fixed_shape_calls`).  The step-by-step parts (feedback's unroll, the HAR) stay eager.
* :func:`infer`: a model's inference on a batch, one graph per shape (evaluation).

Each callable captures at most :data:`MAX_SHAPES` shapes; any other shape (a ragged last batch), and
any capture that fails (an operation that waits for the GPU), runs eager.  Nothing here runs on CPU:
:func:`active` is False there, and the loop is then exactly the eager one.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch
from torch import nn

MAX_SHAPES = 2  # graphs per callable: the full batch and one more; other shapes run eager
WARMUP = 3  # eager steps on a side stream before a capture (cuDNN and allocator set-up stay out of the graph)
_MISSING = object()


def active(graphs: bool, device: torch.device, world: int = 1) -> bool:
    """Whether graphs are used: asked for, on CUDA, in one process (DDP steps stay eager)."""
    return bool(graphs) and device.type == "cuda" and world == 1


def _shapes(values) -> tuple:
    return tuple(None if not torch.is_tensor(v) else (tuple(v.shape), v.dtype, v.requires_grad) for v in values)


class _Saved:
    """Weights, buffers, optimiser state and random state, to undo the steps a capture runs."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer | None = None):
        self.model, self.opt = model, opt
        self.tensors = [(t, t.detach().clone()) for t in model.state_dict().values()]
        self.opt_state = {id(t): (t, t.clone()) for t in _opt_tensors(opt)}
        self.rng = torch.get_rng_state(), torch.cuda.get_rng_state()

    def restore(self) -> None:
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)
            for t in _opt_tensors(self.opt):  # state made by the warm-up (a first step): back to a fresh optimiser's
                if id(t) in self.opt_state:
                    t.copy_(self.opt_state[id(t)][1])
                else:
                    t.zero_()
        torch.set_rng_state(self.rng[0])
        torch.cuda.set_rng_state(self.rng[1])


def _opt_tensors(opt) -> list[torch.Tensor]:
    if opt is None:
        return []
    return [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]


class StepGraphs:
    """``step(batch) -> loss`` (a detached copy) for a fixed-shape task: each batch shape (and
    learning rate: a new one re-captures) replays a captured step, any other shape runs ``eager``.

    ``eager(batch)`` is the loop's own step (forward under autocast without its weight cache,
    backward, optimiser step) on a batch already on the GPU; ``opt`` must be capturable."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, eager: Callable[[dict], torch.Tensor]):
        self.model, self.opt, self.eager = model, opt, eager
        self.graphs: dict = {}  # key -> (graph, static batch, static loss), or None: eager
        self.lrs: tuple = ()

    def __call__(self, batch: dict) -> torch.Tensor:
        lrs = tuple(g["lr"] for g in self.opt.param_groups)
        if lrs != self.lrs:  # the learning rate is baked into a captured optimiser step
            self.graphs.clear()
            self.lrs = lrs
        key = tuple(sorted((k, _shapes([v])) for k, v in batch.items()))
        entry = self.graphs.get(key, _MISSING)
        if entry is _MISSING:
            entry = self.graphs[key] = self._capture(batch) if len(self.graphs) < MAX_SHAPES else None
        if entry is None:
            return self.eager(batch).detach()
        graph, static, loss = entry
        for k, v in batch.items():
            if torch.is_tensor(v):
                static[k].copy_(v, non_blocking=True)
        graph.replay()
        return loss.detach().clone()  # the static loss is overwritten by the next replay

    def _capture(self, batch: dict):
        static = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        saved = _Saved(self.model, self.opt)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self.eager(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss = self.eager(static)
        except RuntimeError as e:  # an operation a graph cannot hold (a host sync): this shape runs eager
            warnings.warn(f"CUDA graph capture of a training step failed, running it eagerly: {e}", stacklevel=3)
            torch.cuda.synchronize()
            return None
        finally:
            saved.restore()
        return graph, static, loss


# ----------------------------------------------------------------------------- one call inside a step


class _Call(nn.Module):
    """``module.<name>`` as a module of its own (its parameters are the module's), for make_graphed_callables."""

    def __init__(self, module: nn.Module, call: Callable):
        super().__init__()
        self.module, self.call = module, call
        self.training = True  # the attribute only: .train() would reach the module's frozen norms

    def forward(self, *args):
        return self.call(*args)


def graph_calls(module: nn.Module, name: str = "forward") -> Callable[[], None]:
    """Make ``module.<name>`` replay CUDA graphs (forward and backward) when called in training mode
    with gradients on and positional tensor arguments on CUDA, one graph per argument shape (at most
    :data:`MAX_SHAPES`; other calls run eager).  The call must run once per backward (its outputs
    live in the graph's memory until the next call).  Returns a function that undoes it."""
    original = getattr(module, name)
    proxy, graphed = _Call(module, original), {}

    def dispatch(*args, **kwargs):
        tensors = [a for a in args if a is not None]
        if kwargs or not (module.training and torch.is_grad_enabled() and tensors
                          and all(torch.is_tensor(a) and a.is_cuda for a in tensors)):
            return original(*args, **kwargs)
        key = (_shapes(args), torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        fn = graphed.get(key, _MISSING)
        if fn is _MISSING:
            fn = graphed[key] = _graph_call(proxy, args) if len(graphed) < MAX_SHAPES else None
        return original(*args) if fn is None else fn(*args)

    setattr(module, name, dispatch)  # an instance attribute: not a parameter, not in the state dict

    def undo():
        graphed.clear()
        if module.__dict__.get(name) is dispatch:
            delattr(module, name)
    return undo


def _graph_call(proxy: _Call, args: tuple):
    if not any(p.requires_grad for p in proxy.parameters()):
        return None  # frozen: nothing to gain over the no-grad path it takes anyway
    sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a for a in args)
    saved = _Saved(proxy.module)  # the warm-up passes move batch-norm statistics when they train
    try:
        graphed = torch.cuda.make_graphed_callables(proxy, sample, num_warmup_iters=WARMUP)
    except (RuntimeError, AssertionError) as e:
        warnings.warn(f"CUDA graph capture of {type(proxy.module).__name__} failed, running it eagerly: {e}",
                      stacklevel=4)
        torch.cuda.synchronize()
        return None
    finally:
        saved.restore()
    return graphed


def fixed_shape_calls(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The calls of a fusion method that run once per step over every valid frame of the batch, so
    that a batch of full-length sequences gives them one shape: the HPE (baseline), both HPEs (the
    ensemble; a frozen one runs without gradients and is left alone), feedback's trunk (with FiLM in
    the FC layers; block FiLM leaves no action-free part).  None under activation checkpointing.
    A method may say its own with a ``fixed_shape_calls()`` method."""
    own = getattr(model, "fixed_shape_calls", None)
    if own is not None:
        return own()
    if getattr(getattr(model, "cfg", None), "activation_checkpoint", 0):
        return []  # chunks recomputed in the backward: many calls per backward, which one graph cannot serve
    from .methods import ActionFeedback, SequentialBaseline, TwoHPEEnsemble

    if isinstance(model, ActionFeedback):
        return [] if getattr(model.hpe.cfg, "film_blocks", True) else [(model.hpe, "before_action")]
    if isinstance(model, SequentialBaseline):
        return [(model.hpe, "forward")]
    if isinstance(model, TwoHPEEnsemble):
        return [(model.hpe1, "forward"), (model.hpe2, "forward")]
    return []


# ----------------------------------------------------------------------------- inference


_inference: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: (graph, static in, static out)}


def infer(model: nn.Module, x: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
    """``model(x, action)["joints"]`` under inference mode, replayed from a graph per shape (the
    weights' addresses are part of the key: a model moved or converted is captured again)."""
    own = _inference.setdefault(model, {})
    params = tuple(p.data_ptr() for p in model.parameters())
    key = (params, _shapes([x, action]), torch.is_autocast_enabled("cuda"))
    entry = own.get(key, _MISSING)
    if entry is _MISSING:
        for stale in [k for k in own if k[0] != params]:
            del own[stale]
        entry = own[key] = _capture_inference(model, x, action) if len(own) < MAX_SHAPES else None
    if entry is None:
        return model(x, action)["joints"]
    graph, static_x, static_action, out = entry
    static_x.copy_(x)
    if action is not None:
        static_action.copy_(action)
    graph.replay()
    return out.clone()


def _capture_inference(model, x, action):
    static_x = x.clone()
    static_action = None if action is None else action.clone()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                model(static_x, static_action)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(static_x, static_action)["joints"]
    except RuntimeError as e:
        warnings.warn(f"CUDA graph capture of {type(model).__name__} inference failed, running it eagerly: {e}",
                      stacklevel=3)
        torch.cuda.synchronize()
        return None
    return graph, static_x, static_action, out
