"""The two halves learn on the smoke benchmark, through the same code the notebooks use: every
registered pose estimator and action recogniser (handfuse.models.registry)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import FrameDataset, PoseSequenceDataset, collate_sequences
from handfuse.fpha import FPHA
from handfuse.models.interfaces import PosePrior
from handfuse.models.registry import HARS, HPES, har_entry, hpe_entry
from handfuse.paths import ensure_synthetic
from handfuse.standalone import pretrain_har


@pytest.fixture(scope="module")
def smoke():
    return FPHA(ensure_synthetic("smoke")), get_preset("smoke")


def _descend(model, loss_fn, steps: int, lr: float) -> tuple[float, float]:
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    return first, loss_fn().item()


@pytest.mark.parametrize("name", sorted(HPES))
def test_a_tiny_hpe_learns_on_smoke_crops(name, smoke, tmp_path):
    fpha, preset = smoke
    cache = get_cache(fpha, preset.preprocess, cache_dir=tmp_path, workers=1, progress=False)
    ds = FrameDataset(cache, fpha.train)
    batch = ds.batch(np.random.default_rng(0).permutation(len(ds))[:32])
    torch.manual_seed(0)
    entry = hpe_entry(name)
    model = entry.build(entry.config(preset))
    if isinstance(model, PosePrior):
        model.init_pca(batch["joints"])
    model.eval()  # no dropout: a fixed batch must be fitted
    first, last = _descend(model, lambda: model.loss(model(batch["depth"]), batch["joints"]), 100, 3e-3)
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("name", sorted(HARS))
def test_a_tiny_har_learns_on_smoke_poses(name, smoke):
    fpha, preset = smoke
    ds = PoseSequenceDataset(fpha, fpha.train[:24])
    batch = collate_sequences([ds[i] for i in range(len(ds))])
    torch.manual_seed(0)
    entry = har_entry(name)
    model = entry.build(entry.config(preset))
    first, last = _descend(model, lambda: model.loss(model(batch["joints"], batch["mask"]), batch["label"]), 80, 1e-2)
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("name", sorted(HARS))
def test_pretraining_writes_a_run_that_reloads_identically(name, smoke, tmp_path):
    fpha, preset = smoke
    model, first = pretrain_har(fpha, preset, attention=True, root=tmp_path, progress=False, model=name)
    prefix = "har-att-" if name == "lstm" else f"har-{name}-att-"  # the default's folder names are unchanged
    assert [p.parent.name.startswith(prefix) for p in tmp_path.glob("*/best.pt")] == [True]
    again, second = pretrain_har(fpha, preset, attention=True, root=tmp_path, progress=False, model=name)
    assert second.test == first.test and second.history == first.history
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)



def test_the_articulation_reader_reads_joint_angles_in_a_run_of_its_own(smoke, tmp_path):
    """``articulation=True`` (01's articulation reader) trains the pose LSTM on the hand's joint angles with
    its own dropout and whole epochs, in a run folder of its own beside the preset's recogniser; for another
    recogniser it is refused by parameter name before anything trains."""
    from handfuse.errors import ConfigError
    from handfuse.standalone import ARTICULATION, ARTICULATION_EPOCHS, har_run

    fpha, preset = smoke
    reader, result = pretrain_har(fpha, preset, root=tmp_path, progress=False, articulation=True)
    assert (reader.cfg.frame, reader.cfg.dropout) == (ARTICULATION["frame"], ARTICULATION["dropout"]) != (
        preset.har.frame, preset.har.dropout)
    assert reader.lstm.input_size == reader.cfg.in_features != preset.har.in_features
    assert len(result.history) == ARTICULATION_EPOCHS  # whole epochs: no early stop
    folder, config, train, _ = har_run(fpha, preset, root=tmp_path, articulation=True)
    assert folder.name.startswith("har-last-articulation-") and (folder / "best.pt").is_file()
    assert config["har"]["frame"] == "angles" and train.patience == train.epochs == ARTICULATION_EPOCHS
    assert har_run(fpha, preset, root=tmp_path)[0] != folder
    with pytest.raises(ConfigError, match="articulation"):
        har_run(fpha, preset, root=tmp_path, model="transformer", articulation=True)
