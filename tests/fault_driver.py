"""Run a handfuse command in this process and SIGKILL it at a chosen point (used by test_interrupt).

    python tests/fault_driver.py FAULT N -- ARGS...

FAULT is where the process dies, with no chance to clean up:
  ``none``      no fault, run to the end;
  ``hold``      N = ``K:R``: at the R-th optimiser step after this process's K-th checkpoint (``last.pt``)
                is in place, mid-epoch, touch the file named by ``$FAULT_READY`` and wait; the test polls
                for that file, checks the checkpoint and sends the SIGKILL itself;
  ``save``      half-way through the N-th ``torch.save`` (a checkpoint write: part of the bytes written),
                or, when N is a file name (``best.pt``), through the first write of that file;
  ``notebook``  half-way through the N-th notebook of ``reproduce`` (papermill replaced by a fake that
                copies the notebook, so that the orchestration is what is tested).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

count = 0


def _hit(n: int) -> bool:
    global count
    count += 1
    return count == n


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _hold(ready: Path) -> None:
    """Say so, then wait for the test's SIGKILL (never return)."""
    ready.touch()
    while True:
        time.sleep(60)


def arm(fault: str, n: str) -> None:
    if fault == "hold":
        import handfuse.train as train

        after, steps = (int(x) for x in n.split(":"))
        ready, checkpoints = Path(os.environ["FAULT_READY"]), []
        save, step = train.save_checkpoint, torch.optim.Adam.step

        def counted_save(path, payload):
            save(path, payload)
            if Path(path).name == train.CHECKPOINT:
                checkpoints.append(payload["epoch"])

        def counted_step(self, *args, **kwargs):
            if len(checkpoints) >= after and _hit(steps):
                _hold(ready)
            return step(self, *args, **kwargs)

        train.save_checkpoint = counted_save  # fit() looks it up in handfuse.train at each call
        torch.optim.Adam.step = counted_step
    elif fault == "save":
        save = torch.save

        def partial(obj, f, *args, **kwargs):
            target = Path(getattr(f, "name", "")).name  # save_checkpoint writes ".{name}.tmp-{pid}"
            if (target.startswith(f".{n}.tmp-") and _hit(1)) if not n.isdigit() else _hit(int(n)):
                f.write(b"\x80\x02 half a checkpoint")
                f.flush()
                os.fsync(f.fileno())
                _die()
            return save(obj, f, *args, **kwargs)

        torch.save = partial
    elif fault == "notebook":
        import papermill

        def fake(source, target, **kwargs):
            shutil.copyfile(source, target)  # papermill writes the output as it goes
            if _hit(int(n)):
                _die()

        papermill.execute_notebook = fake
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, n, sep, *args = sys.argv[1:]
    assert sep == "--"
    arm(fault, n)
    from handfuse.__main__ import main

    sys.exit(main(args))
