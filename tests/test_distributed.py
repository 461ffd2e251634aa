"""Data parallelism on CPU: ``torchrun`` with the gloo backend and two processes trains like one
process with the same global batch, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handfuse.distributed import epoch_batches

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _train(tmp: Path, procs: int, *args: str) -> dict:
    runs = tmp / f"runs{procs}"
    launcher = [str(TORCHRUN), "--nproc_per_node", str(procs), "--master_port", str(29500 + os.getpid() % 1000 + procs)] \
        if procs > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "handfuse", "train", *args, "--preset", "smoke", "--runs", str(runs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"only rank 0 reports: {done.stdout}"
    return {**lines[0], "runs": runs}


def test_shards_of_one_step_make_up_the_one_process_batch(monkeypatch):
    import handfuse.distributed as d

    whole = epoch_batches(40, 8, seed=1, epoch=3)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(d, "rank_world", lambda rank=rank: (rank, 2))
        shards.append(epoch_batches(40, 8, seed=1, epoch=3))
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(w) for w in whole]
    assert all(len(s) == 4 for s in shards[0])


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is installed with torch")
def test_two_gloo_processes_train_like_one(tmp_path):
    # the HAR: 3 epochs, global batch 20 (one process: 20; two: 10 each)
    one = _train(tmp_path, 1, "har", "--train", "epochs=3")
    two = _train(tmp_path, 2, "har", "--train", "epochs=3")
    assert two["processes"] == 2 and one["processes"] == 1
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 0.05
    hist = {n: json.loads(next((r["runs"] / "smoke" / "models").glob("har-*/result.json")).read_text())["history"]
            for n, r in (("one", one), ("two", two))}
    for a, b in zip(hist["one"], hist["two"]):  # the last batch differs by DistributedSampler's padding only
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)
    # a fusion method (frozen batch norm): its pre-trained models are trained data-parallel too.  A global batch
    # of 10 sequences, 5 per process: the preset's 5 (which divides its 45 training sequences) does not split in two
    one = _train(tmp_path, 1, "fusion", "--method", "baseline", "--train", "batch_size=10")
    two = _train(tmp_path, 2, "fusion", "--method", "baseline", "--train", "batch_size=10")
    assert one["test"]["error_mm"] == pytest.approx(two["test"]["error_mm"], rel=0.05)
    leftovers = [p for p in two["runs"].rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    configs = [json.loads(p.read_text())["config"] for p in two["runs"].rglob("result.json")]
    assert configs and all(c.get("processes") == 2 for c in configs)
