"""SIGKILL at random points: training and the reproduction resume to the same result, and nothing
half-written is ever taken for complete (issue: reliability).

Each kill is a real SIGKILL of a child process (tests/fault_driver.py): no ``finally`` runs."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from handfuse.paths import ensure_synthetic
from handfuse.train import BEST, CHECKPOINT, RESULT, load_checkpoint

DRIVER = Path(__file__).with_name("fault_driver.py")
TRAIN = ["train", "hpe", "--preset", "smoke"]  # 2 epochs of 4 steps: checkpoints after each epoch, then best.pt


def drive(fault: str, n: int, args: list[str], env_runs: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HANDFUSE_RUNS": str(env_runs)}
    return subprocess.run([sys.executable, str(DRIVER), fault, str(n), "--", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def run_dir(runs: Path) -> Path:
    """The one HPE run folder under ``runs`` (it may not exist yet: the first checkpoint makes it)."""
    found = list((runs / "smoke" / "models").glob("hpe-*-seed0"))
    assert len(found) <= 1, found
    return found[0] if found else runs / "not-yet"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    ensure_synthetic("smoke")  # built once here, so that no kill lands in data generation
    runs = tmp_path_factory.mktemp("straight")
    done = drive("none", 0, TRAIN, runs)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((run_dir(runs) / RESULT).read_text())


# random points (seeded, so a failure is reproducible): two mid-epoch steps, then one checkpoint write
KILLS = [("step", n) for n in sorted(random.Random(7).sample(range(2, 9), 2))] + [("save", 2)]


def test_killed_training_resumes_to_the_same_result(straight, tmp_path):
    for fault, n in KILLS:
        killed = drive(fault, n, TRAIN, tmp_path)
        assert killed.returncode == -signal.SIGKILL, (fault, n, killed.stderr[-2000:])
        folder = run_dir(tmp_path)
        assert not (folder / RESULT).exists() and not (folder / BEST).exists(), "a killed run looks finished"
        if (folder / CHECKPOINT).exists():  # whatever is there loads: the half-written bytes never replaced it
            load_checkpoint(folder / CHECKPOINT)
    assert list(folder.glob(".*.tmp-*")), "the checkpoint-write kill should have left its temporary file"
    done = drive("none", 0, TRAIN, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((folder / RESULT).read_text())
    assert resumed["test"] == straight["test"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert not list(folder.glob(".*.tmp-*")), "the resumed run should clear the killed write's temporary file"


def test_a_kill_while_writing_the_final_weights_is_not_a_finished_run(straight, tmp_path):
    killed = drive("save", 3, TRAIN, tmp_path)  # the third save is best.pt, after both epoch checkpoints
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = run_dir(tmp_path)
    assert load_checkpoint(folder / CHECKPOINT)["epoch"] == 1 and not (folder / RESULT).exists()
    done = drive("none", 0, TRAIN, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((folder / RESULT).read_text())["test"] == straight["test"]
    load_checkpoint(folder / BEST)


def test_reproduce_killed_mid_notebook_leaves_no_complete_looking_copy_and_reruns(tmp_path):
    from handfuse.reproduce import notebooks

    ensure_synthetic("smoke")
    out, names = tmp_path / "out", [nb.name for nb in notebooks()]
    args = ["reproduce", "--preset", "smoke", "--out", str(out)]
    killed = drive("notebook", 2, args, tmp_path / "runs")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / names[0]).is_file()  # the first one finished
    assert not (out / names[1]).exists() and (out / names[1].replace(".ipynb", ".running.ipynb")).exists()
    rerun = drive("notebook", 0, args, tmp_path / "runs")  # the fake papermill again, no kill: every notebook completes
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*.ipynb")) == sorted(names)  # and nothing .running is left
