"""The data the GPU checks need, made with every core: the smoke and cpu synthetic benchmarks and the
cpu preset's data cropped at the cpu and paper presets' sizes.  ``python scripts/gpu_data.py``."""
import os
import time

from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.fpha import FPHA
from handfuse.paths import ensure_synthetic

if __name__ == "__main__":  # the cache builders start worker processes by forkserver
    n, t0 = os.cpu_count() or 1, time.perf_counter()
    for preset in ("smoke", "cpu"):
        ensure_synthetic(preset, workers=n)
    fpha = FPHA(ensure_synthetic("cpu"))
    for preset in ("cpu", "paper"):
        get_cache(fpha, get_preset(preset).preprocess, workers=n, progress=False)
    print(f"data ready in {time.perf_counter() - t0:.0f} s on {n} cores: {ensure_synthetic('cpu')}")
