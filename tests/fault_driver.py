"""Run a handfuse command in this process and SIGKILL it at a chosen point (used by test_interrupt).

    python tests/fault_driver.py FAULT N -- ARGS...

FAULT is where the N-th event kills the process, with no chance to clean up:
  ``none``      no fault, run to the end;
  ``step``      at the N-th optimiser step (mid-epoch);
  ``save``      half-way through the N-th ``torch.save`` (a checkpoint write: part of the bytes written);
  ``notebook``  half-way through the N-th notebook of ``reproduce`` (papermill replaced by a fake that
                copies the notebook, so that the orchestration is what is tested).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

import torch

count = 0


def _hit(n: int) -> bool:
    global count
    count += 1
    return count == n


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(fault: str, n: int) -> None:
    if fault == "step":
        step = torch.optim.Adam.step

        def counted(self, *args, **kwargs):
            if _hit(n):
                _die()
            return step(self, *args, **kwargs)

        torch.optim.Adam.step = counted
    elif fault == "save":
        save = torch.save

        def partial(obj, f, *args, **kwargs):
            if _hit(n):
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
            if _hit(n):
                _die()

        papermill.execute_notebook = fake
    elif fault != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, n, sep, *args = sys.argv[1:]
    assert sep == "--"
    arm(fault, int(n))
    from handfuse.__main__ import main

    sys.exit(main(args))
