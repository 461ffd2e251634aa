"""The pose LSTM action recogniser: shapes, gradients, masking, attention, stepping and learning."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from handfuse.errors import ConfigError
from handfuse.models.har import HARConfig, PoseLSTM
from handfuse.skeleton import NUM_ACTIONS, NUM_JOINTS

VARIANTS = [(attention, layers) for attention in (False, True) for layers in (1, 2)]
IDS = [f"{'att' if a else 'last'}-L{n}" for a, n in VARIANTS]


def _model(attention: bool, layers: int, hidden: int = 12, dropout: float = 0.0, seed: int = 0) -> PoseLSTM:
    torch.manual_seed(seed)
    return PoseLSTM(HARConfig(hidden=hidden, layers=layers, dropout=dropout, attention=attention))


def _batch(lengths: list[int], T: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random joints (B, T, 21, 3) with garbage (large values) on padded steps, and the mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    joints = torch.randn(len(lengths), T, NUM_JOINTS, 3, generator=g) * 0.5
    garbage = torch.randn(joints.shape, generator=g) * 100
    return torch.where(mask[..., None, None], joints, garbage), mask


@pytest.mark.parametrize(("name", "value"), [
    ("hidden", 0), ("hidden", 2.5), ("layers", 0), ("layers", True), ("dropout", 1.0), ("dropout", -0.1),
    ("dropout", "0.1"), ("attention", "yes"), ("step_loss", -1.0), ("step_loss", None),
])
def test_config_refuses_impossible_values(name, value):
    with pytest.raises(ConfigError, match=f"har.{name}"):
        HARConfig(**{name: value})


@pytest.mark.parametrize(("attention", "layers"), VARIANTS, ids=IDS)
def test_shapes_and_gradients(attention, layers):
    model = _model(attention, layers, dropout=0.1)
    joints, mask = _batch([7, 4, 1])
    labels = torch.tensor([0, 44, 3])
    out = model(joints, mask, labels)
    B, T, C = 3, 7, NUM_ACTIONS
    assert out["step_logits"].shape == (B, T, C) and out["logits"].shape == (B, C)
    assert out["hidden"].shape == (B, T, 12)
    assert (out["step_logits"][~mask] == 0).all()
    if attention:
        assert out["attention"].shape == (B, T)
    else:
        assert out["attention"] is None
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize(("attention", "layers"), VARIANTS, ids=IDS)
def test_padding_never_changes_a_prediction(attention, layers):
    model = _model(attention, layers).eval()
    joints, mask = _batch([9, 5, 9], seed=1)  # sequence 1 is padded by 4 garbage steps
    alone_joints = joints[1:2, :5]
    with torch.no_grad():
        batched = model(joints, mask)
        alone = model(alone_joints)  # mask None: every step valid
    torch.testing.assert_close(batched["logits"][1], alone["logits"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched["step_logits"][1, :5], alone["step_logits"][0], atol=1e-5, rtol=1e-5)
    if attention:
        torch.testing.assert_close(batched["attention"][1, :5], alone["attention"][0], atol=1e-6, rtol=1e-5)
        assert (batched["attention"][1, 5:] == 0).all()


@pytest.mark.parametrize("attention", [False, True], ids=["last", "att"])
def test_non_finite_padding_is_harmless_forward_and_backward(attention):
    joints, mask = _batch([6, 3], seed=7)
    labels = torch.tensor([1, 2])
    grads = []
    for pad in (0.0, float("nan"), float("inf")):
        model = _model(attention, 2)
        out = model(torch.where(mask[..., None, None], joints, pad), mask, labels)
        out["loss"].backward()
        assert torch.isfinite(out["step_logits"]).all() and torch.isfinite(out["logits"]).all()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0])  # the padding's value does not reach the gradient


def test_attention_weights_are_a_distribution_over_valid_steps():
    model = _model(True, 1)
    lengths = [10, 6, 3, 1]
    joints, mask = _batch(lengths, seed=2)
    out = model(joints, mask)
    w = out["attention"]
    assert (w >= 0).all() and (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(len(lengths)))
    assert w[3, 0].item() == pytest.approx(1.0)  # a one-step sequence attends to its only step
    assert w[0].std() > 0  # not merely uniform: the scores depend on the step
    expected = torch.einsum("bt,btc->bc", w, out["step_logits"])
    torch.testing.assert_close(out["logits"], expected)


def test_dead_attention_falls_back_to_the_mean_of_valid_steps():
    model = _model(True, 1)
    with torch.no_grad():
        model.attention.score.weight.zero_()
        model.attention.score.bias.fill_(-1.0)  # ReLU -> every score 0
    joints, mask = _batch([6, 4], seed=3)
    out = model(joints, mask)
    torch.testing.assert_close(out["attention"], mask.float() / mask.sum(1, keepdim=True))
    torch.testing.assert_close(out["logits"][1], out["step_logits"][1, :4].mean(0))


def test_last_step_readout_without_attention():
    model = _model(False, 1)
    joints, mask = _batch([6, 4], seed=4)
    out = model(joints, mask)
    torch.testing.assert_close(out["logits"], out["step_logits"][[0, 1], [5, 3]])


@pytest.mark.parametrize(("attention", "layers"), VARIANTS, ids=IDS)
def test_stepping_reproduces_the_full_forward(attention, layers):
    model = _model(attention, layers, dropout=0.3).eval()
    joints, mask = _batch([8, 5, 2], seed=5)
    with torch.no_grad():
        full = model(joints, mask)
        state = model.init_state(3)
        steps, hidden = [], []
        for t in range(joints.shape[1]):
            logits_t, state = model.step(joints[:, t], state)
            steps.append(logits_t)
            hidden.append(model.hidden(state))
        steps, hidden = torch.stack(steps, 1), torch.stack(hidden, 1)  # (B, T, C), (B, T, H)
        torch.testing.assert_close(steps[mask], full["step_logits"][mask], atol=1e-5, rtol=1e-5)
        logits, weights = model.readout(steps, hidden, mask)
    torch.testing.assert_close(logits, full["logits"], atol=1e-5, rtol=1e-5)
    if attention:
        torch.testing.assert_close(weights, full["attention"], atol=1e-6, rtol=1e-5)


def test_loss_is_cross_entropy_plus_optional_step_loss():
    joints, mask = _batch([6, 3], seed=6)
    labels = torch.tensor([2, 7])
    plain = _model(False, 1)
    out = plain(joints, mask, labels)
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], labels))
    torch.manual_seed(0)
    aux = PoseLSTM(HARConfig(hidden=12, step_loss=0.5))
    out = aux(joints, mask, labels)
    per_step = torch.cat([F.cross_entropy(out["step_logits"][0, :6], labels[[0] * 6], reduction="none"),
                          F.cross_entropy(out["step_logits"][1, :3], labels[[1] * 3], reduction="none")]).mean()
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], labels) + 0.5 * per_step)


def test_mask_must_be_a_prefix():
    model = _model(False, 1)
    joints, _ = _batch([4, 4])
    holes = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with pytest.raises(ValueError, match="prefix"):
        model(joints, holes)
    with pytest.raises(ValueError, match="prefix"):
        model(joints, torch.tensor([[True] * 4, [False] * 4]))


def _order_task(n: int, g: torch.Generator, shuffle: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fresh batch of joints (n, T, 21, 3), mask (n, T) and labels (n,): class 0 moves the index tip
    up then down, class 1 down then up: the same movement played backwards, so both visit the same
    positions and only the order tells them apart.  Lengths 8..16, random hand shapes, amplitudes
    and noise.  ``shuffle`` permutes each sequence's valid steps (a control: no order, no signal)."""
    labels = torch.arange(n) % 2
    lengths = torch.randint(8, 17, (n,), generator=g)
    t = torch.arange(int(lengths.max()))[None, :]
    mask = t < lengths[:, None]  # (n, T)
    phase = 2 * torch.pi * t / (lengths[:, None] - 1)  # (n, T)
    if shuffle:
        phase = torch.gather(phase, 1, torch.argsort(torch.rand(mask.shape, generator=g) + 2.0 * ~mask, dim=1))
    amplitude = (1.0 - 2.0 * labels) * (0.3 + 0.3 * torch.rand(n, generator=g))  # (n,) signed, 100 mm units
    joints = (torch.randn(n, 1, NUM_JOINTS, 3, generator=g) * 0.3  # hand shape
              + torch.randn(n, mask.shape[1], NUM_JOINTS, 3, generator=g) * 0.03)  # (n, T, 21, 3)
    joints[:, :, 11, 2] += amplitude[:, None] * torch.sin(phase)  # the index tip's height
    return joints * mask[..., None, None], mask, labels


def _train_on_order_task(attention: bool, shuffle: bool, steps: int = 200) -> tuple[float, float, float]:
    """(mean loss of the first 10 steps, held-out loss, held-out accuracy) of a tiny HAR trained with
    Adam on fresh batches (so it cannot pass by memorising sequences).  One thread: as fast for
    these tiny matrices, and far less slowed down when the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny_har(attention, shuffle, steps)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_har(attention: bool, shuffle: bool, steps: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = PoseLSTM(HARConfig(hidden=16, attention=attention), num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = []
    for step in range(steps):
        out = model(*_order_task(32, g, shuffle))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step < 10:
            first.append(out["loss"].item())
    joints, mask, labels = _order_task(256, g, shuffle)
    with torch.no_grad():
        out = model.eval()(joints, mask, labels)
    accuracy = (out["logits"].argmax(1) == labels).float().mean().item()
    return sum(first) / len(first), out["loss"].item(), accuracy


@pytest.mark.parametrize("attention", [False, True], ids=["last", "att"])
def test_a_tiny_har_learns_temporal_order(attention):
    first, final, accuracy = _train_on_order_task(attention, shuffle=False)
    assert final < 0.3 * first, (first, final)
    assert accuracy > 0.9


def test_order_task_control_without_order_stays_at_chance():
    """The same training on time-shuffled sequences learns nothing: the class lives only in the order."""
    first, final, accuracy = _train_on_order_task(False, shuffle=True)
    assert final > 0.6 and accuracy < 0.7, (first, final, accuracy)


def _stepping_and_padding_match_the_forward(model, joints):
    """One frame at a time reproduces the full forward of (3, 6, 21, 3) ``joints``, and NaN padding
    after the valid steps of a sequence changes nothing."""
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    padded = joints.clone()
    padded[1, 4:] = float("nan")
    with torch.no_grad():
        out = model(padded, mask)
        state, steps = model.init_state(3), []
        for t in range(6):
            logits, state = model.step(joints[:, t], state)
            steps.append(logits)
    assert torch.isfinite(out["logits"]).all()
    torch.testing.assert_close(torch.stack(steps, 1)[mask], out["step_logits"][mask], atol=1e-5, rtol=1e-5)


def test_the_hand_frame_input_ignores_how_the_whole_hand_is_turned_and_placed():
    """``HARConfig(frame="hand")``: rotating and moving every joint of a sequence changes only the
    wrist and orientation features, never the 63 hand-frame coordinates; stepping one frame at a
    time reproduces the full forward, and padding (NaN even) changes nothing."""
    from handfuse.models.har import HARConfig, PoseLSTM, hand_frame

    torch.manual_seed(0)
    joints = torch.randn(3, 6, 21, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    rotation = q * torch.sign(torch.det(q))  # a proper rotation
    moved = joints @ rotation.T + torch.tensor([0.5, -2.0, 3.0])
    torch.testing.assert_close(hand_frame(moved)[..., :63], hand_frame(joints)[..., :63], atol=1e-4, rtol=1e-4)
    assert (hand_frame(moved)[..., 63:] - hand_frame(joints)[..., 63:]).abs().max() > 0.1
    _stepping_and_padding_match_the_forward(PoseLSTM(HARConfig(hidden=16, frame="hand")).eval(), joints)
    with pytest.raises(Exception, match="har.frame"):
        HARConfig(frame="wrist")


def test_the_angle_input_reads_the_articulation_whatever_the_hand_s_place_turn_and_size():
    """``HARConfig(frame="angles")``: a finger bent by a known angle reads as that angle; moving,
    turning and scaling a hand changes no angle; the change since the previous frame is the frame
    difference (zero on the first); stepping one frame at a time reproduces the full forward."""
    from handfuse.models.har import HARConfig, PoseLSTM, angle_features, joint_angles
    from handfuse.skeleton import JOINT_INDEX

    torch.manual_seed(1)
    joints = torch.randn(3, 6, 21, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    rotation = q * torch.sign(torch.det(q))
    moved = 2.5 * joints @ rotation.T + torch.tensor([0.5, -2.0, 3.0])
    torch.testing.assert_close(joint_angles(moved), joint_angles(joints), atol=1e-4, rtol=1e-4)

    # the index finger straight along x, then its PIP bent by 30 degrees in the x-y plane
    hand = torch.zeros(21, 3)
    for k, name in enumerate(("IMCP", "IPIP", "IDIP", "ITIP")):
        hand[JOINT_INDEX[name]] = torch.tensor([1.0 + k, 0.0, 0.0])
    bent = hand.clone()
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    for k, name in enumerate(("IDIP", "ITIP"), start=1):
        bent[JOINT_INDEX[name]] = hand[JOINT_INDEX["IPIP"]] + k * torch.tensor([c, s, 0.0])
    index = slice(3, 6)  # the index finger's MCP, PIP and DIP bends
    torch.testing.assert_close(joint_angles(hand)[index], torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(joint_angles(bent)[index], torch.tensor([0.0, math.radians(30), 0.0]),
                               atol=1e-5, rtol=0)
    feats = angle_features(torch.stack([hand, bent])[None])[0]  # (2, 47)
    torch.testing.assert_close(feats[0, 19:38], torch.zeros(19))
    torch.testing.assert_close(feats[1, 19:38], joint_angles(bent) - joint_angles(hand))

    _stepping_and_padding_match_the_forward(PoseLSTM(HARConfig(hidden=16, frame="angles")).eval(), joints)


def test_camera_and_angles_together_step_like_the_forward_and_jitter_only_trains():
    """``frame="camera+angles"`` feeds the flat joints beside the angle features and still steps like
    the forward; ``jitter_mm`` adds noise in training mode only (evaluation is the noiseless model's)."""
    from handfuse.models.har import ANGLE_FEATURES, IN_FEATURES, HARConfig, PoseLSTM, angle_features

    torch.manual_seed(2)
    joints = torch.randn(3, 6, 21, 3)
    model = PoseLSTM(HARConfig(hidden=16, frame="camera+angles")).eval()
    assert model.lstm.input_size == IN_FEATURES + ANGLE_FEATURES
    _stepping_and_padding_match_the_forward(model, joints)

    plain = PoseLSTM(HARConfig(hidden=16, frame="angles")).eval()
    noisy = PoseLSTM(HARConfig(hidden=16, frame="angles", jitter_mm=20.0))
    noisy.load_state_dict(plain.state_dict())
    noisy.eval()
    with torch.no_grad():
        torch.testing.assert_close(noisy(joints)["logits"], plain(joints)["logits"])
        noisy.train()
        assert (noisy(joints)["logits"] - plain(joints)["logits"]).abs().max() > 1e-3
    assert angle_features(joints).shape[-1] == ANGLE_FEATURES
    from handfuse.datasets import POSE_SCALE_MM
    from handfuse.models.har import POSE_UNIT_MM

    assert POSE_UNIT_MM == POSE_SCALE_MM  # the jitter's mm are the recogniser's units
    with pytest.raises(Exception, match="har.jitter_mm"):
        HARConfig(jitter_mm=-1.0)


def test_the_distance_input_reads_the_articulation_and_rotation_turns_whole_sequences_in_training_only():
    """``frame="camera+distances"``: the 210 joint distances ignore how the hand is moved and turned
    but read a bent finger (its tip comes nearer its MCP by the known amount), and the input steps
    like the forward.  ``rotate_deg`` turns each training sequence rigidly as a whole (every distance
    between any two joints of any two frames kept; sequences turned differently) and never in evaluation."""
    from handfuse.models.har import (DISTANCE_FEATURES, IN_FEATURES, HARConfig, PoseLSTM, joint_distances,
                                     rotate_sequences)
    from handfuse.skeleton import JOINT_INDEX

    torch.manual_seed(3)
    joints = torch.randn(3, 6, 21, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    moved = joints @ (q * torch.sign(torch.det(q))).T + torch.tensor([0.5, -2.0, 3.0])
    torch.testing.assert_close(joint_distances(moved), joint_distances(joints), atol=1e-4, rtol=1e-4)
    assert joint_distances(joints).shape == (3, 6, DISTANCE_FEATURES) == (3, 6, 210)

    hand = torch.zeros(21, 3)  # the index finger straight along x, unit bones; then its PIP bent by 90 degrees
    for k, name in enumerate(("IMCP", "IPIP", "IDIP", "ITIP")):
        hand[JOINT_INDEX[name]] = torch.tensor([1.0 + k, 0.0, 0.0])
    bent = hand.clone()
    bent[JOINT_INDEX["IDIP"]], bent[JOINT_INDEX["ITIP"]] = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([2.0, 2.0, 0.0])
    pairs = {tuple(p): i for i, p in enumerate(torch.triu_indices(21, 21, 1).T.tolist())}
    tip_to_mcp = pairs[tuple(sorted((JOINT_INDEX["IMCP"], JOINT_INDEX["ITIP"])))]
    assert joint_distances(hand)[tip_to_mcp] == pytest.approx(3.0)
    assert joint_distances(bent)[tip_to_mcp] == pytest.approx(math.sqrt(5.0))

    model = PoseLSTM(HARConfig(hidden=16, frame="camera+distances")).eval()
    assert model.lstm.input_size == IN_FEATURES + DISTANCE_FEATURES
    _stepping_and_padding_match_the_forward(model, joints)

    turned = rotate_sequences(joints, 30.0)
    flat, flat_turned = joints.flatten(1, 2), turned.flatten(1, 2)  # (3, 126, 3): every joint of every frame
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(flat_turned, flat_turned, compute_mode=exact),
                               torch.cdist(flat, flat, compute_mode=exact), atol=1e-4, rtol=1e-4)
    assert (turned - joints).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every sequence moved
    turns = [torch.linalg.lstsq(flat[i], flat_turned[i]).solution for i in range(3)]  # per sequence, p -> p R^T
    assert (turns[0] - turns[1]).abs().max() > 1e-2
    plain = PoseLSTM(HARConfig(hidden=16))
    rotating = PoseLSTM(HARConfig(hidden=16, rotate_deg=20.0))
    rotating.load_state_dict(plain.state_dict())
    plain.eval(), rotating.eval()
    with torch.no_grad():
        torch.testing.assert_close(rotating(joints)["logits"], plain(joints)["logits"])
        rotating.train()
        assert (rotating(joints)["logits"] - plain(joints)["logits"]).abs().max() > 1e-3
    with pytest.raises(Exception, match="har.rotate_deg"):
        HARConfig(rotate_deg=-5.0)
