"""Frozen batch norms folded into convolutions (handfuse.models.fold): the same outputs and gradients
as the plain modules, for both pose estimators (DeepPrior++ with either stem), in both memory
formats; a trunk that ends on the pooling grid skips the pool; the gradient-free 2x2 max-pool gives
torch's values; the strided stem is a stride-2 convolution with no pool."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from handfuse.errors import ConfigError
from handfuse.models import fold
from handfuse.models.fold import conv_bn, max_pool_2x2, plain_batch_norm, run_stem
from handfuse.models.hpe import HPE, HPEConfig
from handfuse.models.resnet_hpe import ResNetHPE, ResNetHPEConfig

SMALL = dict(stem_channels=16, widths=(16, 32, 32, 32), blocks=(1, 1, 1, 1), fc=64)  # channels_last-safe


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm statistics and an affine map far from the identity, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))
    return model


def build_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("deepprior"):
        return HPE(HPEConfig(crop=32, film="both", stem_stride=2 if name == "deepprior-strided" else 1, **SMALL))
    return ResNetHPE(ResNetHPEConfig(crop=32, film="both", **SMALL))


def output_and_grads(model: nn.Module, x: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    joints = model(x, action)["joints"]
    (joints * torch.linspace(-1, 1, joints.numel()).view_as(joints)).sum().backward()
    return joints.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def batch_norm_calls(model: nn.Module, x: torch.Tensor) -> int:
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return len(calls)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["deepprior", "deepprior-strided", "resnet"])
def test_frozen_fold_gives_the_plain_outputs_and_gradients(name, channels_last):
    net = trained_looking(build_net(name)).eval()  # frozen statistics: fine-tuning with freeze_norm, or evaluation
    if channels_last:
        net.to_channels_last()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 32, 32, generator=g) * 2 - 1
    action = torch.softmax(torch.randn(5, 45, generator=g) * 3, -1)
    with plain_batch_norm():
        reference, reference_grads = output_and_grads(net, x, action)
    folded, grads = output_and_grads(net, x, action)
    assert reference.abs().max() > 0.1  # a real signal, not a dead net
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-5)
    assert grads.keys() == reference_grads.keys()
    for key in grads:  # every conv weight, every gamma and beta gets the plain gradient
        torch.testing.assert_close(grads[key], reference_grads[key], rtol=1e-3, atol=1e-5, msg=key)
    # and the fold really ran: only the batch norms that follow no convolution are still called
    with plain_batch_norm():
        plain_calls = batch_norm_calls(net, x)
    n_blocks = len(net.blocks)
    kept = {"deepprior": n_blocks + 1, "deepprior-strided": n_blocks + 1, "resnet": 0}[name]  # DeepPrior++: each block's bn1, and the last norm
    assert plain_calls > kept and batch_norm_calls(net, x) == kept


@pytest.mark.parametrize("name", ["deepprior", "deepprior-strided", "resnet"])
def test_training_mode_batch_norm_is_untouched(name):
    net, twin = (trained_looking(build_net(name)).train() for _ in range(2))
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    torch.manual_seed(1)
    out = net(x)["joints"]
    torch.manual_seed(1)
    with plain_batch_norm():
        plain = twin(x)["joints"]
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)  # batch statistics, as before
    twin_norms = [m for m in twin.modules() if isinstance(m, nn.BatchNorm2d)]
    for m, t, b in zip(norms, twin_norms, before):  # the running statistics moved, identically
        assert not torch.equal(m.running_mean, b)
        torch.testing.assert_close(m.running_mean, t.running_mean)


@pytest.mark.parametrize("training", [True, False])
def test_the_strided_stem_is_a_stride_2_conv_without_a_pool(training):
    pooled, strided = build_net("deepprior"), build_net("deepprior-strided")
    # the same parameters (a run's config, not its weights, says which stem it has)
    assert {k: v.shape for k, v in pooled.state_dict().items()} == {k: v.shape for k, v in strided.state_dict().items()}
    for net in (pooled, strided):
        trained_looking(net).train(training)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    conv, bn = strided.stem[0], strided.stem[1]
    by_hand = F.relu(F.batch_norm(F.conv2d(x, conv.weight, None, 2, 2), bn.running_mean.clone(), bn.running_var.clone(),
                                  bn.weight, bn.bias, training, 0.0, bn.eps))
    out = run_stem(strided.stem, x)
    assert out.shape == run_stem(pooled.stem, x).shape == (4, 16, 16, 16)  # the same map size either way
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, run_stem(pooled.stem, x), atol=1e-3)
    assert strided(x)["joints"].shape == (4, 21, 3)


def test_a_stem_stride_other_than_1_or_2_is_refused_by_name():
    with pytest.raises(ConfigError, match="hpe.stem_stride"):
        HPEConfig(stem_stride=4)


def test_conv_bn_folds_a_conv_bias_too():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, 2, 1, bias=True), trained_looking(nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_a_trunk_ending_on_the_pooling_grid_skips_the_pool(monkeypatch):
    torch.manual_seed(0)
    net = trained_looking(HPE(HPEConfig(crop=64, **SMALL))).eval()  # 64 -> 32 -> 16 -> 8 -> 4 -> 4: the 4x4 grid
    calls = []
    net.pool.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        h = run_stem(net.stem, x)
        for block in net.blocks:
            h = block(h, None)
        assert h.shape[-2:] == (4, 4)
        pooled = net.pool(F.relu(net.norm(h))).flatten(1)  # the pool is the identity here
        assert torch.equal(net.trunk(x), pooled) and len(calls) == 1  # only the reference's call
        small = HPE(HPEConfig(crop=32, **SMALL)).eval()  # ends on 2x2: pooled up to the 4x4 grid
        assert small.trunk(x[:, :, :32, :32]).shape == (3, small.feature_dim)


def channels_last_map(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A feature map with what a stem sees: flat regions (ties everywhere), NaN, +-inf, signed zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    x[:, :, : h // 2, : w // 2] = 0.25  # a flat patch: every 2x2 window in it is a four-way tie
    x[0, 0, 0, 1], x[0, 0, 2, 2], x[-1, -1, -1, -1] = float("nan"), float("inf"), float("-inf")
    x[0, 1, 0, 0], x[0, 1, 0, 1], x[0, 1, 1, 0], x[0, 1, 1, 1] = -0.0, -1.0, -2.0, -3.0
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(3, 16, 8, 8), (2, 5, 6, 10), (1, 2, 4, 4), (4, 24, 32, 16)])
def test_max_pool_2x2_gives_torch_values(shape):
    x = channels_last_map(*shape)
    expected = F.max_pool2d(x, 2)
    with torch.inference_mode():
        got = max_pool_2x2(x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), expected.isnan())  # NaN propagates as torch's kernel does
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())  # bitwise, ties and infinities included
    assert torch.equal(got.nan_to_num().signbit(), expected.nan_to_num().signbit())  # even the sign of a zero


def pool_calls(monkeypatch) -> list:
    calls = []

    def counted(x):
        calls.append(tuple(x.shape))
        return max_pool_2x2(x)

    monkeypatch.setattr(fold, "max_pool_2x2", counted)
    return calls


@pytest.mark.parametrize("name", ["deepprior", "resnet"])
def test_evaluation_pools_without_indices_and_matches_torch(name, monkeypatch):
    net = trained_looking(build_net(name)).eval().to_channels_last()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    x[:, :, :12] = 1.0  # background at the far clip, as in a depth crop: ties in the stem's map
    calls = pool_calls(monkeypatch)
    with torch.inference_mode():
        fast = net(x)["joints"]
        assert len(calls) == 1  # the stem's pool took the fast path
        with plain_batch_norm():
            plain = net(x)["joints"]
        assert len(calls) == 1
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)  # the fold differs by rounding only
    with torch.inference_mode():
        stem = run_stem(net.stem, x.contiguous(memory_format=torch.channels_last))
    conv, bn, _, pool = net.stem
    with torch.no_grad():
        reference = F.relu(pool(conv_bn(conv, bn, x.contiguous(memory_format=torch.channels_last))))
    assert torch.equal(stem, reference)  # the pool itself: exactly torch's values


def test_the_fast_pool_is_kept_out_of_training_and_other_layouts(monkeypatch):
    calls = pool_calls(monkeypatch)
    net = trained_looking(build_net("deepprior")).to_channels_last()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    net.train()(x)["joints"].sum().backward()  # training: torch's pool (its backward picks one of tied maxima)
    net.eval()(x)["joints"].sum().backward()  # frozen statistics, still a gradient: torch's pool
    assert calls == []
    plain = trained_looking(build_net("deepprior")).eval()  # contiguous layout: torch's pool
    with torch.inference_mode():
        plain(x)
        assert calls == []
        odd = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        odd = odd.eval().to(memory_format=torch.channels_last)
        y = torch.rand(2, 1, 9, 9).contiguous(memory_format=torch.channels_last)
        assert run_stem(odd, y).shape == (2, 16, 4, 4) and calls == []  # odd size: torch's floor mode
        net(x)
        assert len(calls) == 1
