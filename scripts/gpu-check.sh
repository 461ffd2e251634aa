#!/usr/bin/env bash
# The GPU checks, on a machine with CUDA (never CI: our machines have none).  Writes to OUTDIR:
#   gpu.txt         the GPU, driver and torch build
#   data.log        the synthetic data and crop caches the checks need (every core)
#   pytest.log      tests/test_cuda.py: CUDA against CPU outputs, training with bf16 autocast,
#                   checkpoints loading on CPU, resume, every fusion method end to end
#   cuda_speed.*    python -m benchmarks.cuda_speed (HPE against the matmul, fusion methods, input path,
#                   a profiled paper-sized training step)
#   paper_epoch.*   the paper preset's HPE pre-training for 2 epochs on the cpu preset's data (crops
#                   of 128 px, the original's network), with its per-epoch and data-wait seconds
# Usage: bash scripts/gpu-check.sh OUTDIR   (PYTHON=... to pick the interpreter; default python3)
set -uo pipefail
out=${1:?usage: bash scripts/gpu-check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HANDFUSE_RUNS=${HANDFUSE_RUNS:-$PWD/runs/gpu-check}
PY=${PYTHON:-python3}
status=0
step() { echo "== $1 ($(date +%T))"; }

step gpu
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/gpu.txt"

step data
$PY scripts/gpu_data.py > "$out/data.log" 2>&1 || { status=1; tail -20 "$out/data.log"; }
tail -1 "$out/data.log"

step "tests/test_cuda.py"
$PY -m pytest -q -rs tests/test_cuda.py -p no:cacheprovider > "$out/pytest.log" 2>&1 || status=1
tail -15 "$out/pytest.log"

step "paper preset, HPE pre-training, 2 epochs"
$PY -m handfuse train hpe --preset paper --data-root data/synth/cpu-seed0 --device cuda --train epochs=2 \
    --runs "$out/paper_runs" > "$out/paper_epoch.log" 2>&1 || status=1
tail -2 "$out/paper_epoch.log"
$PY - "$out" <<'PY' || status=1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
result = json.loads(next((out / "paper_runs").rglob("result.json")).read_text())
epochs = [{k: h[k] for k in ("epoch", "seconds", "data_seconds", "train_loss", "val_error_mm")} for h in result["history"]]
(out / "paper_epoch.json").write_text(json.dumps({"epochs": epochs, "test_error_mm": result["test"]["error_mm"]}, indent=1))
for h in epochs:
    print(f"epoch {h['epoch']}: {h['seconds']:.1f} s, waiting for data {h['data_seconds']:.1f} s, val {h['val_error_mm']:.1f} mm")
PY
rm -rf "$out/paper_runs"

step "benchmarks.cuda_speed"
$PY -m benchmarks.cuda_speed --repeats 5 --compile --profile --data-root data/synth/cpu-seed0 --json "$out/cuda_speed.json" \
    > "$out/cuda_speed.log" 2>&1 || status=1
cat "$out/cuda_speed.log" | tail -40

step "done, status $status"
exit $status
