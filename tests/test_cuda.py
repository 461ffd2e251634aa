"""The CUDA paths, on a machine with a GPU (our CI has none: there these tests are skipped, and
``python -m pytest tests/test_cuda.py`` on a GPU server runs them).

What ``--device cuda`` must do: the same models give the CPU's outputs (fp32 to TF32 rounding, bf16
autocast to bf16 rounding), training learns with bf16 autocast, its checkpoints load on a machine
without a GPU, a killed run resumes, the augmentation gives the CPU's crops, and every fusion method
fine-tunes and scores end to end."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from handfuse.augment import AugmentConfig
from handfuse.config import get_preset
from handfuse.models.har import PoseLSTM
from handfuse.models.hpe import HPE
from handfuse.train import BEST, CHECKPOINT, TrainConfig, fit, load_checkpoint, to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU server)")


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """``a`` within ``rel`` of ``b``, relative to ``b``'s largest magnitude."""
    err = float((a.float().cpu() - b.float().cpu()).abs().max())
    scale = float(b.float().abs().max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} x {scale:.3g}"


def test_to_device_leaves_tensors_already_there():
    """On CPU (and on the GPU for its own tensors) a batch's tensors are passed on, not copied."""
    batch = {"x": torch.randn(3, 2), "n": 4}
    moved = to_device(batch, "cpu")
    assert moved["x"] is batch["x"] and moved["n"] == 4


@cuda
def test_to_device_copies_through_pinned_memory_without_blocking():
    batch = {"x": torch.randn(64, 1, 32, 32), "label": torch.arange(64), "name": "seq"}
    moved = to_device(batch, "cuda")
    assert moved["x"].is_cuda and moved["label"].is_cuda and moved["name"] == "seq"
    torch.cuda.synchronize()
    assert torch.equal(moved["x"].cpu(), batch["x"]) and torch.equal(moved["label"].cpu(), batch["label"])
    again = to_device(moved, moved["x"].device)
    assert again["x"] is moved["x"]


@cuda
@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_hpe_on_cuda_gives_the_cpu_outputs(preset):
    torch.manual_seed(0)
    cfg = get_preset(preset).hpe
    cpu = HPE(replace(cfg, film="both"))
    cpu.init_pca(torch.randn(128, 21, 3) * 0.3)
    for m in cpu.modules():  # random FiLM and batch-norm statistics, so that every path matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    cpu.eval()
    gpu = HPE(replace(cfg, film="both")).cuda()
    gpu.load_state_dict(cpu.state_dict())
    if gpu.channels_last_safe:
        gpu.to_channels_last()
    gpu.eval()
    x = torch.randn(8, 1, cfg.crop, cfg.crop).clamp(-1, 1)
    action = torch.softmax(torch.randn(8, 45), -1)
    with torch.inference_mode():
        want = cpu(x, action)["joints"]
        _close(gpu(x.cuda(), action.cuda())["joints"], want, 2e-2)  # TF32 convolutions (torch's default)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _close(gpu(x.cuda(), action.cuda())["joints"], want, 8e-2)


@cuda
@pytest.mark.parametrize("attention", [False, True])
def test_har_on_cuda_gives_the_cpu_outputs_and_ignores_padding(attention):
    torch.manual_seed(0)
    cpu = PoseLSTM(replace(get_preset("cpu").har, attention=attention)).eval()
    gpu = PoseLSTM(replace(get_preset("cpu").har, attention=attention)).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    joints = torch.randn(3, 12, 21, 3)
    mask = torch.arange(12)[None] < torch.tensor([12, 7, 3])[:, None]
    with torch.inference_mode():
        want = cpu(joints, mask)["logits"]
        got = gpu(joints.cuda(), mask.cuda())
        _close(got["logits"], want, 1e-3)
        if attention:
            sums = (got["attention"] * mask.cuda()).sum(1)
            assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        padded = joints.clone()
        padded[~mask] = 1e3  # garbage in the padding changes nothing
        _close(gpu(padded.cuda(), mask.cuda())["logits"], got["logits"], 1e-6)


@cuda
def test_augmentation_on_the_gpu_gives_the_cpu_crops(smoke_fusion_data):
    from handfuse.tasks import HPETask

    fpha, cache, _, _ = smoke_fusion_data
    task = HPETask(cache, {"train": fpha.train}, AugmentConfig())
    cfg = replace(get_preset("smoke").train_hpe, max_batches=2)
    on_cpu = list(task.batches("train", 1, cfg))
    on_gpu = list(task.batches("train", 1, replace(cfg, device="cuda")))
    assert len(on_cpu) == len(on_gpu) == 2
    for a, b in zip(on_cpu, on_gpu):
        assert b["depth"].is_cuda and b["joints"].is_cuda
        _close(b["joints"], a["joints"], 1e-5)
        # nearest-neighbour warps: a grid coordinate on a pixel boundary may round the other way
        differ = float((b["depth"].cpu() - a["depth"]).abs().gt(1e-5).float().mean())
        assert differ < 2e-3, f"{differ:.2%} of the pixels differ"


class _Killed(Exception):
    pass


@cuda
def test_hpe_pretraining_on_cuda_learns_loads_on_cpu_and_resumes(smoke_fusion_data, tmp_path):
    """A real pre-training (smoke data, augmentation, bf16 autocast) on the GPU: it learns, its best
    weights load onto the CPU with ``weights_only=True`` and score the same there, and a run killed
    in its third epoch resumes to the uninterrupted run's result (to GPU nondeterminism)."""
    from handfuse.tasks import HPETask, split_train_val

    fpha, cache, _, _ = smoke_fusion_data
    preset = get_preset("smoke")
    train, val = split_train_val(fpha.train, 0.15, 0)
    task = HPETask(cache, {"train": train, "val": val, "test": fpha.test}, preset.augment)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-3, patience=4, device="cuda", max_batches=6)

    def model():
        torch.manual_seed(0)
        m = HPE(preset.hpe)
        m.init_pca(torch.from_numpy(cache.joints[:200] - cache.centres[:200, None]).float() / task.half_cube)
        return m

    whole = fit(model(), task, cfg, tmp_path / "whole", progress=False)
    losses = [h["train_loss"] for h in whole.history]
    assert losses[-1] < 0.8 * losses[0], losses
    best = load_checkpoint(tmp_path / "whole" / BEST)
    assert all(v.device.type == "cpu" for v in best["model"].values())
    on_cpu = model()
    on_cpu.load_state_dict(best["model"])
    assert task.evaluate(on_cpu, "test", cfg)["error_mm"] == pytest.approx(whole.test["error_mm"], rel=0.02)

    batches = task.batches

    def killed(split, epoch, cfg):
        for b, batch in enumerate(batches(split, epoch, cfg)):
            if (epoch, b) == (2, 3):
                raise _Killed
            yield batch
    task.batches = killed
    with pytest.raises(_Killed):
        fit(model(), task, cfg, tmp_path / "killed", progress=False)
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT)["epoch"] == 1
    task.batches = batches
    resumed = fit(model(), task, cfg, tmp_path / "killed", progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.test["error_mm"] == pytest.approx(whole.test["error_mm"], rel=0.05)


@pytest.fixture(scope="module")
def cuda_runs(tmp_path_factory):
    """One runs folder for the module, so that the smoke pre-trainings are made once."""
    return tmp_path_factory.mktemp("cuda-runs")


@cuda
@pytest.mark.parametrize("method,options", [("baseline", {}), ("feedback", {"p_eq": 0.9}),
                                            ("noisy_feedback", {}), ("ensemble", {"attention": True})])
def test_every_fusion_method_fine_tunes_and_scores_on_cuda(smoke_fusion_data, cuda_runs, monkeypatch, method, options):
    from handfuse.datasets import SequenceDataset
    from handfuse.finetune import run

    monkeypatch.setenv("HANDFUSE_RUNS", str(cuda_runs))
    fpha, cache, _, _ = smoke_fusion_data
    tests = {"gt": SequenceDataset(cache, fpha.test)}
    record = run(method, fpha, get_preset("smoke"), 0, tests, device="cuda", cache=cache, progress=False, **options)
    assert next(record.model.parameters()).is_cuda
    assert np.isfinite(record.test.gt.error_mm) and 0 <= record.test.gt.accuracy <= 1
    assert record.history and all(np.isfinite(h["train_loss"]) for h in record.history)


@cuda
def test_untrained_chain_scores_on_cuda_as_on_cpu(smoke_fusion_data, tmp_path, monkeypatch):
    """The same pre-trained models, chained untrained, score the same test error on both devices."""
    from handfuse import finetune
    from handfuse.datasets import SequenceDataset

    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path))
    fpha, cache, _, _ = smoke_fusion_data
    tests = {"gt": SequenceDataset(cache, fpha.test)}
    models = finetune.pretrained(fpha, get_preset("smoke"), 0, False, "fc", "cpu", cache, False)
    cfg = finetune.resolved_config("baseline", get_preset("smoke"), {})
    chain = finetune.build_method("baseline", models, get_preset("smoke"), cfg, 0)
    on_cpu = finetune.evaluate(chain, tests)["gt"]
    on_gpu = finetune.evaluate(chain.cuda(), tests)["gt"]
    assert on_gpu["error_mm"] == pytest.approx(on_cpu["error_mm"], rel=0.01)
    assert abs(on_gpu["accuracy"] - on_cpu["accuracy"]) <= 1 / len(fpha.test) + 1e-9


def _no_capture_failed(record) -> None:
    failed = [str(w.message) for w in record if "CUDA graph capture" in str(w.message)]
    assert not failed, failed


@cuda
@pytest.mark.parametrize("amp,rel", [(False, 2e-3), (True, 2e-2)])
def test_graphed_hpe_pretraining_follows_the_eager_trajectory(smoke_fusion_data, amp, rel):
    """``graphs=True``: every training step replayed from a CUDA graph (re-captured each epoch, as
    the cosine schedule moves the learning rate), evaluation too, crops on the GPU; the per-epoch
    losses and the scores are the eager run's, to GPU rounding."""
    import warnings

    from handfuse.tasks import HPETask, split_train_val

    fpha, cache, _, _ = smoke_fusion_data
    preset = get_preset("smoke")
    train, val = split_train_val(fpha.train, 0.15, 0)
    task = HPETask(cache, {"train": train, "val": val, "test": fpha.test}, preset.augment)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-3, patience=3, device="cuda", amp=amp, schedule="cosine",
                      max_batches=8)

    def trained(c):
        torch.manual_seed(0)
        m = HPE(preset.hpe)
        m.init_pca(torch.from_numpy(cache.joints[:200] - cache.centres[:200, None]).float() / task.half_cube)
        return fit(m, task, c, progress=False)

    eager = trained(cfg)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        graphed = trained(replace(cfg, graphs=True))
    _no_capture_failed(record)
    assert task.crops_on("cuda") is not None
    for a, b in zip(graphed.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel)
        assert a["val_error_mm"] == pytest.approx(b["val_error_mm"], rel=rel)
    assert graphed.test["error_mm"] == pytest.approx(eager.test["error_mm"], rel=rel)


@cuda
def test_graphed_inference_and_resident_crops_give_the_eager_values(smoke_fusion_data):
    from handfuse import graphs
    from handfuse.datasets import FrameDataset, resident_crops

    fpha, cache, _, _ = smoke_fusion_data
    ds = FrameDataset(cache, fpha.test)
    crops = resident_crops(cache, "cuda")
    assert crops is not None and crops.dtype == torch.float16
    idx = np.arange(0, len(ds), 3)[:32]
    host, device = ds.batch(idx), ds.batch(idx, crops)
    assert torch.equal(device["depth"].cpu(), host["depth"]) and torch.equal(device["joints"], host["joints"])
    assert resident_crops(cache, "cuda", share=1e-9) is None  # too little room: the host path
    torch.manual_seed(0)
    model = HPE(get_preset("smoke").hpe).cuda().eval()
    x = host["depth"].cuda()
    with torch.inference_mode():
        want = model(x)["joints"]
        for _ in range(2):  # capture, then replay
            _close(graphs.infer(model, x), want, 1e-5)
        _close(graphs.infer(model, x[:5]), model(x[:5])["joints"], 1e-5)  # a second shape
        _close(graphs.infer(model, x[:7]), model(x[:7])["joints"], 1e-5)  # past MAX_SHAPES: eager


@cuda
@pytest.mark.parametrize("method,options", [("baseline", {}), ("ensemble", {"train_hpe1": True}),
                                            ("feedback", {"film": "fc", "p_eq": 0.9})])
def test_graphed_fine_tuning_follows_the_eager_trajectory(smoke_fusion_data, cuda_runs, monkeypatch, method, options):
    """Fine-tuning with ``graphs=True``: the HPE calls over every frame replayed from graphs (forward
    and backward), ragged batches eager; the losses and scores are the eager run's, to GPU rounding,
    and the model is left without graphs afterwards."""
    import warnings

    from handfuse import finetune
    from handfuse.datasets import SequenceDataset
    from handfuse.standalone import splits

    monkeypatch.setenv("HANDFUSE_RUNS", str(cuda_runs))
    fpha, cache, _, _ = smoke_fusion_data
    preset = get_preset("smoke")
    cfg = finetune.resolved_config(method, preset, {**options, "activation_checkpoint": 0})
    models = finetune.pretrained(fpha, preset, 0, cfg.attention, cfg.film, "cuda", cache, False)
    data = {k: SequenceDataset(cache, refs) for k, refs in splits(fpha, preset, 0).items()}
    train = replace(preset.train_fuse, device="cuda", amp=False, epochs=2)

    def tuned(c):
        torch.manual_seed(1)
        model = finetune.build_method(method, models, preset, cfg, 0)
        return model, fit(model, finetune.FusionTask(data), c, progress=False)

    _, eager = tuned(train)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model, graphed = tuned(replace(train, graphs=True))
    _no_capture_failed(record)
    for a, b in zip(graphed.history, eager.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=5e-3)
    assert graphed.test["error_mm"] == pytest.approx(eager.test["error_mm"], rel=5e-3)
    assert all("forward" not in m.__dict__ and "before_action" not in m.__dict__ for m in model.modules())
