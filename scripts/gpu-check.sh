#!/usr/bin/env bash
# The GPU checks, on a machine with CUDA (never CI: our machines have none).  Writes to OUTDIR:
#   gpu.txt         the GPU, driver and torch build
#   data.log        the synthetic data and crop caches the checks need (every core)
#   pytest.log      tests/test_cuda.py: CUDA against CPU outputs, training with bf16 autocast,
#                   checkpoints loading on CPU, resume, every fusion method end to end
#   gpu_runs.*      python -m benchmarks.gpu_runs: every run type at paper size (HPE, HAR, baseline, feedback,
#                   ensemble), 1, 2, 4 and 8 workers side by side, CUDA graphs off and on; busy.csv: the
#                   GPU's utilisation sampled every 200 ms meanwhile, busy.txt its mean per worker count
#   workers.json, reproduce_paper_projection.json   python -m benchmarks.gpu_projection on those numbers
#   paper_epoch*.*  the paper preset's HPE pre-training for 2 epochs on the cpu preset's data (crops
#                   of 128 px, the original's network), eager and with --train graphs=true
#   launch_modes.*  python -m benchmarks.launch_modes: the HPE pre-training step and a baseline fine-tuning step,
#                   eager, CUDA graphs, torch.compile default and mode="reduce-overhead" (ms/step, compile time)
#   cuda_speed.*    python -m benchmarks.cuda_speed, HPE rows only (against the matmul)
#   e2e.log         a reduced paper run end to end (baseline fine-tuning, 1 epoch, graphs on), if time is left
# Every step has a timeout; the whole script stays under about 9 minutes (BUDGET_S=540).
# Usage: bash scripts/gpu-check.sh OUTDIR   (PYTHON=... to pick the interpreter; default python3;
#        DEVICE=cpu WORKERS="1 2" PRESET=smoke STEPS=2 run its Python parts on a machine without a GPU)
set -uo pipefail
out=${1:?usage: bash scripts/gpu-check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HANDFUSE_RUNS=${HANDFUSE_RUNS:-$PWD/runs/gpu-check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-paper} WORKERS=${WORKERS:-1 2 4 8} STEPS=${STEPS:-5} BUDGET_S=${BUDGET_S:-540}
status=0
start=$SECONDS
step() { echo "== $1 ($(date +%T), $((SECONDS - start)) s in)"; }
gpu() { [ "$DEVICE" != cpu ]; }

step gpu
if gpu; then
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  } 2>&1 | tee "$out/gpu.txt"
fi

step data
timeout 150 $PY scripts/gpu_data.py > "$out/data.log" 2>&1 || { status=1; tail -20 "$out/data.log"; }
tail -1 "$out/data.log"

step "benchmarks.gpu_runs: workers $WORKERS, graphs off and on, $PRESET size"
rm -f "$out/gpu_runs.jsonl" "$out/busy.txt"
for n in $WORKERS; do
  sampler=
  if gpu && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$out/busy_$n.csv" 2>/dev/null &
    sampler=$!
  fi
  timeout 75 $PY -m benchmarks.gpu_runs --workers "$n" --preset "$PRESET" --device "$DEVICE" --steps "$STEPS" \
      --json "$out/gpu_runs.jsonl" >> "$out/gpu_runs.log" 2>&1 || { status=1; echo "workers $n: failed or timed out"; }
  if [ -n "$sampler" ]; then
    kill "$sampler" 2> /dev/null; wait "$sampler" 2> /dev/null
    awk -v n="$n" '{s += $1; c++} END {if (c) printf "workers %s: GPU busy %.0f %% (mean of %d samples)\n", n, s / c, c}' \
        "$out/busy_$n.csv" | tee -a "$out/busy.txt"
  fi
done
tail -40 "$out/gpu_runs.log"

step "benchmarks.gpu_projection"
timeout 30 $PY -m benchmarks.gpu_projection --measured "$out/gpu_runs.jsonl" --preset "$PRESET" --device "$DEVICE" \
    --out "$out" 2>&1 | tee "$out/projection.log" || status=1
timeout 30 $PY -m benchmarks.gpu_projection --measured "$out/gpu_runs.jsonl" --preset "$PRESET" --device "$DEVICE" \
    --graphs --out "$out/graphs" 2>&1 | tee -a "$out/projection.log" || status=1

step "benchmarks.launch_modes: eager, CUDA graphs, torch.compile default and reduce-overhead"
backend=inductor
gpu || backend=eager  # the CPU dry run: no compiler, and no timing that means anything
rm -f "$out/launch_modes.jsonl"
timeout 120 $PY -m benchmarks.launch_modes --preset "$PRESET" --device "$DEVICE" --backend "$backend" --kinds hpe baseline \
    --steps $((STEPS * 4)) --json "$out/launch_modes.jsonl" > "$out/launch_modes.log" 2>&1 || status=1
tail -9 "$out/launch_modes.log"

if gpu; then
  step "tests/test_cuda.py"
  timeout 100 $PY -m pytest -q -rs tests/test_cuda.py -p no:cacheprovider > "$out/pytest.log" 2>&1 || status=1
  tail -15 "$out/pytest.log"

  for graphs in false true; do
    step "paper preset, HPE pre-training, 2 epochs, graphs=$graphs"
    timeout 45 $PY -m handfuse train hpe --preset paper --data-root data/synth/cpu-seed0 --device cuda \
        --train epochs=2 graphs=$graphs --runs "$out/paper_runs_$graphs" > "$out/paper_epoch_$graphs.log" 2>&1 || status=1
    tail -2 "$out/paper_epoch_$graphs.log"
    $PY - "$out" "$graphs" <<'PY' || status=1
import json, pathlib, sys
out, graphs = pathlib.Path(sys.argv[1]), sys.argv[2]
result = json.loads(next((out / f"paper_runs_{graphs}").rglob("result.json")).read_text())
epochs = [{k: h[k] for k in ("epoch", "seconds", "data_seconds", "train_loss", "val_error_mm")} for h in result["history"]]
(out / f"paper_epoch_{graphs}.json").write_text(json.dumps({"epochs": epochs, "test_error_mm": result["test"]["error_mm"]}, indent=1))
for h in epochs:
    print(f"epoch {h['epoch']}: {h['seconds']:.1f} s, waiting for data {h['data_seconds']:.1f} s, val {h['val_error_mm']:.1f} mm")
PY
    rm -rf "$out/paper_runs_$graphs"
  done

  step "benchmarks.cuda_speed (HPE rows)"
  timeout 60 $PY -m benchmarks.cuda_speed --repeats 3 --only hpe --json "$out/cuda_speed.json" > "$out/cuda_speed.log" 2>&1 || status=1
  tail -15 "$out/cuda_speed.log"

  left=$((BUDGET_S - (SECONDS - start)))
  if [ "$left" -gt 40 ]; then
    step "reduced paper run end to end (pre-training, baseline fine-tuning 1 epoch, graphs on; ${left} s left)"
    timeout "$left" $PY -m handfuse train fusion --preset paper --data-root data/synth/cpu-seed0 --device cuda \
        --method baseline --train epochs=1 graphs=true --runs "$out/e2e_runs" > "$out/e2e.log" 2>&1 || status=1
    tail -3 "$out/e2e.log"
    rm -rf "$out/e2e_runs"
  else
    echo "no time left for the end-to-end run"
  fi
fi

step "done, status $status"
exit $status
