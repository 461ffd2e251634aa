"""The main job: run the numbered notebooks headless with papermill, in order.

``python -m handfuse reproduce --preset cpu`` generates the synthetic benchmark
when no FPHA root is given, then executes ``notebooks/NN_*.ipynb`` with the
parameters injected, writing the executed copies to ``--out`` (never over the
sources).  It stops at the first failing notebook and names it and the cell.
"""
from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import get_preset
from .paths import REPO, ensure_synthetic


class NotebookFailed(RuntimeError):
    pass


def notebooks(folder: Path = REPO / "notebooks") -> list[Path]:
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def reproduce(preset: str, out: Path, data_root: str | None = None, seed: int = 0, device: str = "cpu",
              seeds: int | None = None) -> list[Path]:
    import papermill

    get_preset(preset)
    if data_root is None:
        ensure_synthetic(preset)  # once, with its own progress bar, before any notebook runs (seed seeds models)
    elif not Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root}: no such folder")
    out.mkdir(parents=True, exist_ok=True)
    from .train import resolve_device

    resolve_device(device)  # refuse --device cuda without CUDA before any work starts
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        from .errors import ConfigError

        raise ConfigError("--seeds", seeds, "an integer >= 1 (model seeds per method)")
    params = {"preset": preset, "data_root": str(Path(data_root).resolve()) if data_root else None, "seed": seed,
              "device": device, **({"seeds": seeds} if seeds is not None else {})}
    done = []
    for nb in tqdm(notebooks(), desc=f"reproduce ({preset})", unit="notebook"):
        target = out / nb.name
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=_known(nb, params), cwd=str(nb.parent),
                                       progress_bar={"desc": f"  {nb.stem} cells", "leave": False},
                                       store_widget_state=False)  # live widgets need a kernel; their state is MBs of plotly.js
        except papermill.PapermillExecutionError as e:
            raise NotebookFailed(f"{nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue});"
                                 f" the executed copy with the traceback is {target}") from None
        tqdm.write(f"  {nb.name}: {time.perf_counter() - start:.0f} s -> {target}")
        done.append(target)
    return done


def _known(nb: Path, params: dict) -> dict:
    """The parameters a notebook declares in its ``parameters`` cell (papermill warns about others)."""
    import papermill

    declared = papermill.inspect_notebook(str(nb))
    return {k: v for k, v in params.items() if k in declared}
