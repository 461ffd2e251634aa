"""SIGKILL mid-training: training resumes from its last checkpoint to the same result as an uninterrupted
run, and nothing half-written is ever taken for complete (issue: reliability).  The reproduction killed
mid-notebook reruns what was not finished.

Each kill is a real SIGKILL of a child process (tests/fault_driver.py): no ``finally`` runs.  The
mid-epoch kills come from this test, once the child has written the checkpoints asked for and says it
is mid-epoch: the checkpoint is there when the process dies, so the next run resumes from it."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handfuse.paths import ensure_synthetic
from handfuse.train import BEST, CHECKPOINT, RESULT, load_checkpoint

DRIVER = Path(__file__).with_name("fault_driver.py")
# 8 epochs of 4 steps, set here so that the kills below do not depend on the preset: a checkpoint after
# each epoch, then best.pt (no early stop: patience = epochs)
EPOCHS, STEPS = 8, 4
TRAIN = ["train", "hpe", "--preset", "smoke", "--train", f"epochs={EPOCHS}", "--train", f"patience={EPOCHS}",
         "--train", f"max_batches={STEPS}"]
DEADLINE_S = 600.0  # for a child to reach its fault; reached only when something is wrong


def _env(runs: Path, **extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HANDFUSE_RUNS": str(runs), **extra}


def drive(fault: str, n: int | str, args: list[str], env_runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), fault, str(n), "--", *args], capture_output=True, text=True,
                          timeout=DEADLINE_S, env=_env(env_runs))


def kill_mid_epoch(after: int, steps: int, args: list[str], runs: Path, tmp: Path) -> None:
    """Run ``args`` until it holds at the ``steps``-th optimiser step after its ``after``-th checkpoint,
    then SIGKILL it from here."""
    ready, log = tmp / f"ready-{after}-{steps}", tmp / f"driver-{after}-{steps}.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, str(DRIVER), "hold", f"{after}:{steps}", "--", *args],
                                 stdout=out, stderr=subprocess.STDOUT, env=_env(runs, FAULT_READY=str(ready)))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not ready.exists():
            assert child.poll() is None, f"ended ({child.returncode}) before its fault: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no fault within {DEADLINE_S:.0f} s: {log.read_text()[-2000:]}"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def run_dir(runs: Path) -> Path:
    """The one HPE run folder under ``runs`` (it may not exist yet: the first checkpoint makes it)."""
    found = list((runs / "smoke" / "models").glob("hpe-*-seed0"))
    assert len(found) <= 1, found
    return found[0] if found else runs / "not-yet"


def final_metrics(result: dict) -> dict:
    """What a run ends with: its selected epoch, scores and per-epoch history (without its timings)."""
    return {"best_epoch": result["best_epoch"], "val": result["val"], "test": result["test"],
            "history": [{k: v for k, v in h.items() if k not in ("seconds", "data_seconds")} for h in result["history"]]}


# mid-epoch kills at seeded random points (a failure is reproducible): after 1-3 checkpoints of the
# process, 1-3 steps into the next epoch (of 4)
_pick = random.Random(7)
KILLS = [(_pick.randint(1, 3), _pick.randint(1, STEPS - 1)) for _ in range(2)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    ensure_synthetic("smoke")  # built once here, so that no kill lands in data generation
    runs = tmp_path_factory.mktemp("straight")
    done = drive("none", 0, TRAIN, runs)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((run_dir(runs) / RESULT).read_text())
    assert len(result["history"]) == EPOCHS >= sum(after for after, _ in KILLS) + 2  # room for every kill below
    return result


def test_killed_training_resumes_to_the_same_result(straight, tmp_path):
    epoch = -1  # the last checkpoint's epoch
    for after, steps in KILLS:  # each run resumes from the last one's checkpoint, and is killed mid-epoch
        kill_mid_epoch(after, steps, TRAIN, tmp_path, tmp_path)
        folder = run_dir(tmp_path)
        assert (folder / CHECKPOINT).is_file(), "the kill came before any checkpoint"
        assert load_checkpoint(folder / CHECKPOINT)["epoch"] == epoch + after  # resumed, then `after` epochs more
        epoch += after
        assert not (folder / RESULT).exists() and not (folder / BEST).exists(), "a killed run looks finished"
    killed = drive("save", 2, TRAIN, tmp_path)  # the second checkpoint write after resuming, half-way
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(folder.glob(".*.tmp-*")), "the checkpoint-write kill should have left its temporary file"
    assert load_checkpoint(folder / CHECKPOINT)["epoch"] == epoch + 1  # the half-written bytes never replaced it
    done = drive("none", 0, TRAIN, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((folder / RESULT).read_text())
    assert final_metrics(resumed) == final_metrics(straight)
    assert not list(folder.glob(".*.tmp-*")), "the resumed run should clear the killed write's temporary file"


def test_a_kill_while_writing_the_final_weights_is_not_a_finished_run(straight, tmp_path):
    killed = drive("save", BEST, TRAIN, tmp_path)  # best.pt, written after the last epoch's checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = run_dir(tmp_path)
    assert load_checkpoint(folder / CHECKPOINT)["epoch"] == len(straight["history"]) - 1
    assert not (folder / RESULT).exists() and not (folder / BEST).exists()
    done = drive("none", 0, TRAIN, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert final_metrics(json.loads((folder / RESULT).read_text())) == final_metrics(straight)
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
