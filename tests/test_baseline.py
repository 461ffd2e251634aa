"""Method #1: the chain gives what its halves give when run one after the other."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.datasets import PoseSequenceDataset, SequenceDataset
from handfuse.fpha import FPHA
from handfuse.methods import SequentialBaseline, evaluate_sequences
from handfuse.models.har import PoseLSTM
from handfuse.models.hpe import HPE
from handfuse.paths import ensure_synthetic
from handfuse.tasks import HARTask, HPETask


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    fpha, preset = FPHA(ensure_synthetic("smoke")), get_preset("smoke")
    cache = get_cache(fpha, preset.preprocess, cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)
    torch.manual_seed(0)
    hpe, har = HPE(preset.hpe), PoseLSTM(preset.har)
    hpe.init_pca(torch.randn(64, 21, 3) * 0.3)
    refs = fpha.test[:10]
    return fpha, cache, refs, SequentialBaseline(hpe, har, preset.preprocess.cube_mm / 2)


def test_the_chain_equals_its_halves_run_apart(chain):
    fpha, cache, refs, model = chain
    out = evaluate_sequences(model, SequenceDataset(cache, refs), batch_size=4)
    hpe_task = HPETask(cache, {"test": refs})
    poses = hpe_task.predict(model.hpe, "test")  # (N, 21, 3) mm, sequences in order
    ends = np.cumsum([cache.lengths[cache.index_of(r)] for r in refs])
    sequences = np.split(poses, ends[:-1])
    har = HARTask({"test": PoseSequenceDataset.from_joints(sequences, [r.label for r in refs])}).outputs(model.har, "test")
    np.testing.assert_allclose(out["logits"], np.stack(har["logits"]), atol=1e-4)
    assert out["error_mm"] == pytest.approx(hpe_task.evaluate(model.hpe, "test", None)["error_mm"], rel=1e-5)


def test_gradients_reach_both_halves(chain):
    fpha, cache, refs, model = chain
    from handfuse.datasets import collate_sequences

    data = SequenceDataset(cache, refs[:3])
    batch = collate_sequences([data[i] for i in range(3)])
    model.train()
    out = model(batch["depth"], batch["centre"], batch["mask"])
    torch.nn.functional.cross_entropy(out["logits"], batch["label"]).backward()
    assert model.hpe.fc3.weight.grad.abs().sum() > 0 and model.har.classifier.weight.grad.abs().sum() > 0
    model.zero_grad()
