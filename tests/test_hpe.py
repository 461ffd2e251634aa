"""The DeepPrior++-style pose estimator and its FiLM conditioning (handfuse.models.hpe, .film)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from handfuse.errors import ConfigError
from handfuse.models.film import FiLM, uniform_action
from handfuse.models.fold import plain_batch_norm
from handfuse.models.hpe import FILM_PLACEMENTS, HPE, HPEConfig, count_flops, frozen_for_inference
from handfuse.skeleton import NUM_ACTIONS

TINY = dict(stem_channels=8, widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), fc=64)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and spin-waiting OpenMP threads run 10-50x
    slower while another process holds a core (the training test took 2 s alone, 110 s contended)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(crop: int = 32, **kw) -> HPE:
    torch.manual_seed(0)
    return HPE(HPEConfig(crop=crop, **{**TINY, **kw}))


def random_poses(n: int, rank: int = 5, seed: int = 0) -> torch.Tensor:
    """(n, 21, 3) poses on a random ``rank``-dimensional affine subspace."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(63, generator=g) * 0.3
    return (mean + torch.randn(n, rank, generator=g) @ torch.randn(rank, 63, generator=g) * 0.1).view(n, 21, 3)


def crops(b: int, crop: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, crop, crop, generator=g) * 2 - 1  # (B, 1, S, S)


def one_hot(b: int, label: int = 3) -> torch.Tensor:
    return nn.functional.one_hot(torch.full((b,), label), NUM_ACTIONS).float()


def randomise_film(model: HPE) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FiLM):
                m.linear.weight.copy_(torch.randn(m.linear.weight.shape, generator=g) * 0.5)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("key, value", [
    ("film", "conv"), ("crop", 8), ("widths", ()), ("strides", (2, 2, 3, 1)), ("blocks", (1, 1, 1)),
    ("dropout", 1.0), ("pca_dim", 64), ("pool", 0), ("fc", 0), ("loss", "l1"),
])
def test_config_refuses_impossible_values_naming_them(key, value):
    with pytest.raises(ConfigError, match=f"hpe.{key}"):
        HPEConfig(**{key: value})


def test_config_accepts_lists_as_tuples():
    assert HPEConfig(widths=[8, 8], strides=[2, 1], blocks=[1, 2]).widths == (8, 8)


# ----------------------------------------------------------------------------- FiLM


def test_film_is_the_identity_at_init_and_modulates_per_channel():
    film = FiLM(NUM_ACTIONS, 6)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    w = torch.softmax(torch.randn(4, NUM_ACTIONS), -1)
    assert torch.equal(film(x, w), x)
    with torch.no_grad():
        film.linear.weight.normal_()
        film.linear.bias.normal_()
    gamma, beta = film.linear(w).chunk(2, -1)  # (B, C)
    y = film(x, w)
    assert torch.allclose(y, (1 + gamma[:, :, None, None]) * x + beta[:, :, None, None], atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    fc = torch.randn(4, 6)
    assert torch.allclose(film(fc, w), (1 + gamma) * fc + beta, atol=1e-6)


def test_uniform_action_is_w_eq():
    w = uniform_action(3, "cpu")
    assert w.shape == (3, NUM_ACTIONS) and torch.allclose(w, torch.full((3, 45), 1 / 45)) and torch.allclose(w.sum(1), torch.ones(3))


# ----------------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("crop", [32, 64])
@pytest.mark.parametrize("film", FILM_PLACEMENTS)
def test_shapes_and_gradients_for_every_film_placement(film, crop):
    model = tiny(crop, film=film)
    poses = random_poses(40)
    model.init_pca(poses)
    x, target = crops(3, crop), poses[:3]
    out = model(x, torch.softmax(torch.randn(3, NUM_ACTIONS), -1), target)
    assert out["pca"].shape == (3, 30) and out["joints"].shape == (3, 21, 3) and out["loss"].dim() == 0
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("decoder."):
            assert p.grad is None, "the PCA decoder is frozen by default"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    expected = {"none": 0, "blocks": 4, "fc": 2, "both": 6}[film]
    assert len(films) == expected
    for m in films:  # zero-initialised, yet in the graph: they will learn
        assert m.linear.weight.grad.abs().sum() > 0


def test_wrong_input_shapes_are_refused():
    model = tiny(32, film="fc")
    with pytest.raises(ValueError, match="depth must be"):
        model(crops(2, 64))
    with pytest.raises(ValueError, match="action must be"):
        model(crops(2, 32), uniform_action(3))


# ----------------------------------------------------------------------------- FiLM fed w_eq is a plain HPE


def test_conditioned_hpe_equals_the_plain_hpe_until_its_film_learns():
    plain, both = tiny(32), tiny(32, film="both")
    missing, unexpected = both.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".film" in k or k.startswith("film") for k in missing)
    plain.eval(), both.eval()
    x = crops(4, 32)
    reference = plain(x)["joints"]
    assert torch.equal(both(x)["joints"], reference)  # None -> w_eq
    assert torch.equal(both(x, uniform_action(4))["joints"], reference)
    assert torch.equal(both(x, one_hot(4))["joints"], reference)  # zero FiLM ignores any action

    randomise_film(both)
    w_eq = both(x, uniform_action(4))["joints"]
    assert not torch.allclose(both(x, one_hot(4))["joints"], w_eq, atol=1e-4)
    assert not torch.allclose(both(x, one_hot(4, 3))["joints"], both(x, one_hot(4, 7))["joints"], atol=1e-4)
    assert torch.equal(both(x)["joints"], w_eq)  # None still means w_eq


# ----------------------------------------------------------------------------- speed path


@pytest.mark.parametrize("film", FILM_PLACEMENTS)
def test_trunk_then_head_is_forward(film):
    model = tiny(32, film=film)
    randomise_film(model)
    model.eval()
    x, a = crops(3, 32), torch.softmax(torch.randn(3, NUM_ACTIONS), -1)
    out = model(x, a)
    split = model.head(model.trunk(x, a), a)
    assert torch.equal(out["joints"], split["joints"]) and torch.equal(out["pca"], split["pca"])
    if film in ("none", "fc"):  # the trunk does not read the action
        assert torch.equal(model.trunk(x), model.trunk(x, a))
    else:
        assert not torch.allclose(model.trunk(x), model.trunk(x, a), atol=1e-5)


def test_a_sequence_through_the_trunk_once_matches_frame_by_frame_with_feedback():
    model = tiny(32, film="fc")
    randomise_film(model)
    model.eval()
    T = 6
    frames = crops(T, 32)  # one sequence, (T, 1, S, S)
    actions = torch.softmax(torch.randn(T, NUM_ACTIONS), -1)  # a different feedback every step
    features = model.trunk(frames)  # (T, F): one batch
    for t in range(T):
        batched = model.head(features[t:t + 1], actions[t:t + 1])["joints"]
        alone = model(frames[t:t + 1], actions[t:t + 1])["joints"]
        assert torch.allclose(batched, alone, atol=1e-5), t


def test_channels_last_gives_the_same_output():
    model = tiny(64).eval()
    x = crops(2, 64)
    reference = model(x)["joints"]
    model.to_channels_last()
    assert model.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model(x)["joints"], reference, atol=1e-5)


def test_count_flops_matches_a_hand_count_of_convolutions_and_linears():
    model = tiny(64, film="both").eval()
    total = []

    def hook(m, inputs, output):
        if isinstance(m, nn.Conv2d):
            total.append(2 * output.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups)
        else:
            total.append(2 * output.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad(), plain_batch_norm():  # every conv module called (a folded one is not)
        model(crops(1, 64))
    for h in handles:
        h.remove()
    assert count_flops(model) == sum(total) > 0
    assert count_flops(tiny(64)) > 3 * count_flops(tiny(32)) / 1.2  # the convolutions scale with area


# ----------------------------------------------------------------------------- the pose prior


def test_pca_reconstructs_poses_of_its_subspace():
    model = tiny(32)
    poses = random_poses(200, rank=5)
    explained = model.init_pca(poses)
    assert explained == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(model.decode(model.project(poses)), poses, atol=1e-5)
    small = tiny(32, pca_dim=3)  # fewer components than the poses' rank: it cannot
    assert small.init_pca(poses) < 0.99
    assert (small.decode(small.project(poses)) - poses).abs().max() > 1e-2


def test_pca_loss_is_the_joint_loss_rescaled_inside_the_subspace():
    model = tiny(32, dropout=0.0)
    poses = random_poses(100)
    model.init_pca(poses)
    out = model(crops(4, 32))
    pca_loss = model.loss(out, poses[:4])
    joints_loss = nn.functional.mse_loss(out["joints"], poses[:4])
    assert pca_loss.item() * 30 == pytest.approx(joints_loss.item() * 63, rel=1e-4)


def test_pca_needs_fitting_and_enough_poses():
    model = tiny(32)
    with pytest.raises(RuntimeError, match="init_pca"):
        model(crops(2, 32), target=random_poses(2))
    with pytest.raises(ValueError, match="at least"):
        model.init_pca(random_poses(10))


def test_frozen_pca_gets_no_gradient_and_unfrozen_does():
    model = tiny(32, loss="joints")
    model.init_pca(random_poses(50))
    x, target = crops(2, 32), random_poses(2, seed=1)
    model(x, target=target)["loss"].backward()
    assert model.decoder.weight.grad is None and model.fc3.weight.grad is not None
    model.freeze_pca(False)
    model(x, target=target)["loss"].backward()
    assert model.decoder.weight.grad is not None and model.decoder.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- it learns


def blob_crops(n: int, crop: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops with one square blob whose (x, y, depth) is the pose's offset: (n, 1, S, S), (n, 21, 3)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 3, generator=g) * 1.2 - 0.6  # (n, 3) in crop units and normalised depth
    pix = ((centre[:, :2] + 1) * crop / 2).long().clamp(3, crop - 4)  # (n, 2) column, row
    depth = torch.ones(n, 1, crop, crop)
    for i, (c, r) in enumerate(pix.tolist()):
        depth[i, 0, r - 3:r + 4, c - 3:c + 4] = centre[i, 2]
    shape = torch.randn(21, 3, generator=g) * 0.2
    return depth, shape + centre[:, None, :]


def test_a_tiny_hpe_learns_where_the_blob_is():
    torch.manual_seed(0)
    depth, joints = blob_crops(64)
    model = HPE(HPEConfig(crop=32, **{**TINY, "fc": 128}, dropout=0.0))
    model.init_pca(joints)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def eval_error() -> float:
        model.eval()
        with torch.no_grad():
            err = (model(depth)["joints"] - joints).norm(dim=-1).mean().item()
        model.train()
        return err

    before = eval_error()
    for _ in range(100):
        opt.zero_grad()
        model(depth, target=joints)["loss"].backward()
        opt.step()
    after = eval_error()
    assert after < 0.25 * before, (before, after)


@pytest.mark.parametrize("film", ["none", "fc", "blocks", "both"])
def test_before_and_after_action_compose_to_the_forward(film):
    torch.manual_seed(0)
    model = HPE(HPEConfig(crop=32, stem_channels=8, widths=(8, 16), strides=(2, 2), blocks=(1, 1), pool=2, fc=32,
                          film=film)).eval()
    for m in model.modules():
        if isinstance(m, FiLM):
            torch.nn.init.normal_(m.linear.weight)
    depth, action = torch.randn(5, 1, 32, 32), torch.softmax(torch.randn(5, 45), -1)
    with torch.no_grad():
        split = model.after_action(model.before_action(depth), action)["joints"]
        torch.testing.assert_close(split, model(depth, action)["joints"])


def test_tiny_models_stay_out_of_channels_last():
    from handfuse.config import get_preset

    assert not HPE(get_preset("smoke").hpe).channels_last_safe  # 2-8 channels: torch's CPU backward crashes
    assert HPE(get_preset("paper").hpe).channels_last_safe
    # the cpu preset's first bottleneck would narrow 32 channels to 8; its floor of 16 keeps it safe
    assert HPE(get_preset("cpu").hpe).channels_last_safe
    narrow = HPE(replace(get_preset("cpu").hpe, min_mid=1))
    assert not narrow.channels_last_safe and narrow.blocks[0].conv1.out_channels == 8
    floored = HPE(get_preset("cpu").hpe)
    assert [b.conv2.in_channels for b in floored.blocks] == [16, 16, 32, 32]  # max(width // 4, 16)
    with pytest.raises(ConfigError, match="hpe.min_mid"):
        replace(get_preset("cpu").hpe, min_mid=0)


def test_frozen_inference_matches_eager_and_is_a_snapshot():
    model = tiny(32).eval()
    x = crops(4, 32)
    with torch.inference_mode():
        reference = model(x)["joints"]
        fast = frozen_for_inference(model)
        assert torch.allclose(fast(x), reference, atol=1e-5)
        model.blocks[0].bn2.running_mean.add_(50.0)  # freezing folded this batch norm into conv1's weights
        assert torch.allclose(fast(x), reference, atol=1e-5)
        assert (model(x)["joints"] - reference).abs().max() > 1e-4  # while the eager model sees the change
    with pytest.raises(ValueError, match="eval mode"):
        frozen_for_inference(model.train())
