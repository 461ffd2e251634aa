"""The main job: run the numbered notebooks headless with papermill, in order.

``python -m handfuse reproduce --preset cpu --out DIR`` generates the synthetic
benchmark when no FPHA root is given, then executes ``notebooks/NN_*.ipynb`` with
the parameters injected (``out`` among them).  Everything the run produces lives
under ``DIR``: the executed copies (never over the sources), ``results/`` (every
notebook's numbers, ``summary.md`` and ``summary.json``), ``timings.json``,
``run.json`` (its parameters, the data's fingerprint and the code version; it says
``"complete": false`` until the last notebook passed) and, unless ``--figures``
names another folder, ``figures/``.  Only the trained models stay in the shared,
content-keyed ``runs/<preset>/models``.  A ``DIR`` that holds another run (other
parameters or data) is refused before any work.  It stops at the first failing
notebook and names it and the cell.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import get_preset
from .errors import check, is_int
from .fpha import FPHA, POSE_DIR, SPLIT_FILE, VIDEO_DIR
from .paths import REPO, ensure_synthetic
from .results import ResultsConflict, differences, run_record, write_json

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


class NotebookFailed(RuntimeError):
    pass


SUMMARY = "05_summary"  # runs last, so that it summarises every results file the run wrote (08's too)


def notebooks(folder: Path = REPO / "notebooks") -> list[Path]:
    """The numbered notebooks in the order a run executes them: by number, the summary last."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"), key=lambda p: (p.stem == SUMMARY, p.name))


def reproduce(preset: str, out: Path, data_root: str | None = None, seed: int = 0, device: str = "cpu",
              seeds: int | None = None, only: list[str] | None = None, figures: Path | None = None) -> list[Path]:
    """Run the numbered notebooks (``only``: those whose number is listed) into ``out``; figures go to
    ``figures`` (None: ``$HANDFUSE_FIGURES`` when set, else ``out/figures``).  See the module
    docstring.  Returns the executed copies."""
    check_params(preset, data_root, seed, device, seeds)  # before any work starts
    chosen = select(notebooks(), only)
    out = Path(out).resolve()
    figures = Path(figures) if figures is not None else Path(os.environ.get("HANDFUSE_FIGURES") or out / "figures")
    figures = figures.resolve()  # the kernels run in notebooks/: a relative path would land there
    check(data_root is None or figures.resolve() != (REPO / "figures").resolve(), "--figures", str(figures),
          "a folder outside the checkout's figures/ (that folder holds the synthetic benchmark's figures; "
          "figures of a data root, FPHA's frames among them, must never be committed)")
    start = time.perf_counter()
    root = Path(data_root) if data_root is not None else ensure_synthetic(preset)  # once, before any notebook runs
    seconds = {"data": time.perf_counter() - start}
    params = {"preset": preset, "data_root": str(Path(data_root).resolve()) if data_root else None, "seed": seed,
              "device": device, **({"seeds": seeds} if seeds is not None else {})}
    run = _claim(out, root, params)  # refused here when out holds another run
    for stale in out.glob("*.running.ipynb"):  # left by a run that was killed: never a result
        stale.unlink()
    done = []
    saved = os.environ.get("HANDFUSE_FIGURES")
    os.environ["HANDFUSE_FIGURES"] = str(figures)  # the kernels inherit it
    try:
        for nb in tqdm(chosen, desc=f"reproduce ({preset})", unit="notebook"):
            t0 = time.perf_counter()
            done.append(_execute(nb, out, _known(nb, {**params, "out": str(out)})))
            seconds[nb.stem] = time.perf_counter() - t0
    finally:
        if saved is None:
            del os.environ["HANDFUSE_FIGURES"]
        else:
            os.environ["HANDFUSE_FIGURES"] = saved
    _write_timings(out, preset, params, seconds, time.perf_counter() - start)
    write_json(out / RUN_FILE, {**run, "notebooks": [nb.stem for nb in chosen], "figures": str(figures), "complete": True})
    return done


RUN_FILE = "run.json"


def _claim(out: Path, root: Path, params: dict) -> dict:
    """Write ``out/run.json`` (the parameters, data source and fingerprint, code version; not yet
    complete), after refusing an ``out`` whose ``run.json`` records another run."""
    from .plots import data_source
    from .runs import code_version, data_fingerprint

    record = {**run_record(data_source(root), data_fingerprint(FPHA(root)), params), "code": code_version()}
    held = out / RUN_FILE
    if held.is_file():
        diffs = differences(record, json.loads(held.read_text()))
        if diffs:
            raise ResultsConflict(f"{out} holds another run ({'; '.join(diffs)}; this run's first): choose another --out,"
                                  " or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(held, {**record, "complete": False})
    return record


def _write_timings(out: Path, preset: str, params: dict, seconds: dict, total: float) -> None:
    """``out/timings.json``: wall seconds of the data step and of each notebook, and the total, with
    the machine (what ``python -m benchmarks`` reports as the reproduction's time)."""
    import datetime

    from .report import machine_info

    record = {"preset": preset, "parameters": params, "seconds": seconds, "total_minutes": total / 60,
              "machine": machine_info(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    write_json(out / "timings.json", record)
    tqdm.write(f"reproduction ({preset}): {total / 60:.1f} min; timings in {out / 'timings.json'}")


def _execute(nb: Path, out: Path, parameters: dict) -> Path:
    """Run one notebook into ``out``.  The executed copy is written as ``NN_name.running.ipynb``
    while it runs (papermill saves after every cell) and renamed to ``NN_name.ipynb`` only when every
    cell passed, or to ``NN_name.failed.ipynb`` (with the traceback) when one failed: a copy under
    the notebook's own name is always complete, and a previous run's is removed first."""
    import papermill

    target, running, failed = (out / f"{nb.stem}{suffix}.ipynb" for suffix in ("", ".running", ".failed"))
    for old in (target, failed):
        old.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(nb), str(running), parameters=parameters, cwd=str(nb.parent),
                                   progress_bar={"desc": f"  {nb.stem} cells", "leave": False},
                                   store_widget_state=False)  # live widgets need a kernel; their state is MBs of plotly.js
    except papermill.PapermillExecutionError as e:
        os.replace(running, failed)
        raise NotebookFailed(f"{nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue});"
                             f" the executed copy with the traceback is {failed}") from None
    os.replace(running, target)
    tqdm.write(f"  {nb.name}: {time.perf_counter() - start:.0f} s -> {target}")
    return target


def select(found: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks whose two-digit number is in ``only`` (all when None), in order."""
    if only is None:
        return found
    numbers = [nb.name[:2] for nb in found]
    for n in only:
        check(n in numbers, "--notebooks", n, f"the number of a notebook: one of {numbers}")
    return [nb for nb in found if nb.name[:2] in only]


def check_params(preset: str, data_root: str | Path | None, seed: int, device: str, seeds: int | None) -> None:
    """The notebooks' parameters, each refused with a message naming it and what is allowed."""
    get_preset(preset)
    if data_root is not None:
        check_data_root(data_root)
    check_seed(seed)
    check_device(device)
    check(seeds is None or (is_int(seeds) and seeds >= 1), "--seeds", seeds, "an integer >= 1 (model seeds per method)")


def check_seed(seed: int, name: str = "--seed") -> None:
    check(is_int(seed) and seed >= 0, name, seed, "an integer >= 0")


def check_device(device: str, name: str = "--device") -> None:
    """'cpu', 'cuda' or 'cuda:N', and cuda only where CUDA is available (N below the device count)."""
    check(isinstance(device, str) and DEVICE.fullmatch(device) is not None, name, device, "'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        import torch

        check(torch.cuda.is_available(), name, device, "'cpu': CUDA is not available on this machine")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        check(index < count, name, device, f"'cpu' or a CUDA device 'cuda:0'..'cuda:{count - 1}'")


def check_data_root(data_root: str | Path, name: str = "--data-root") -> None:
    """An FPHA-shaped folder whose split file reads and names sequences that exist (a broken file
    inside it is a DataError naming the file and line)."""
    root = Path(data_root)
    shaped = root.is_dir() and (root / SPLIT_FILE).is_file() and (root / VIDEO_DIR).is_dir() and (root / POSE_DIR).is_dir()
    check(shaped, name, str(data_root), f"an FPHA-shaped folder holding {SPLIT_FILE}, {VIDEO_DIR}/ and {POSE_DIR}/")
    FPHA(root)


def _known(nb: Path, params: dict) -> dict:
    """The parameters a notebook declares in its ``parameters`` cell (papermill warns about others)."""
    import papermill

    declared = papermill.inspect_notebook(str(nb))
    return {k: v for k, v in params.items() if k in declared}
