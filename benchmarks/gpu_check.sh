#!/usr/bin/env bash
# Issue 24's one device run (make gpu-check), < 10 min on one H100: the smoke study end to end
# on the GPU in bf16 (Snakemake, params runtime {device: cuda, precision: bf16}) while the same
# study runs on the CPU in fp32 beside it, then the loss-kernel GPU tests and the GPU loss
# benchmark (benchmarks/gpu_kernels.sh), then the per-stage times and the students' metrics of
# both runs side by side (benchmarks/gpu_check_summary.py; paste into benchmarks/RESULTS.md).
# Exit status: non-zero when any part failed. WORK (default: a new temporary folder) keeps the
# two project copies for inspection.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BIN=$(cd "$(dirname "$PY")" && pwd)
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name())" || exit 2
WORK=${WORK:-$(mktemp -d)}
echo "gpu-check: projects under $WORK"

study() {  # study NAME DEVICE PRECISION CORES: the smoke study in a fresh copy of the project
  local dir=$WORK/$1
  mkdir -p "$dir"
  git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$dir" 2>/dev/null
  "$PY" - "$dir/params.yaml" "$2" "$3" <<'PYEOF'
import sys, yaml
params = yaml.safe_load(open("configs/smoke.yaml"))
params["runtime"].update(device=sys.argv[2], precision=sys.argv[3])
open(sys.argv[1], "w").write(yaml.safe_dump(params, sort_keys=False))
PYEOF
  # the copy's own src/ runs (not the checkout the venv was installed from, which may change meanwhile)
  (cd "$dir" && git init -q && PATH="$BIN:$PATH" PYTHONPATH="$dir/src${PYTHONPATH:+:$PYTHONPATH}" \
      timeout 420 "$BIN/snakemake" -c"$4" \
      --workflow-profile workflow/profiles/default > snakemake.log 2>&1)
  local rc=$?
  echo "gpu-check: $1 study ($2, $3) rc=$rc, log $dir/snakemake.log"
  return $rc
}

start=$SECONDS
study cpu cpu fp32 8 & cpu_pid=$!
study gpu cuda bf16 4; gpu=$?
echo "gpu-check: GPU study took $((SECONDS - start)) s"
bash benchmarks/gpu_kernels.sh --gpu-batches 4096 16384 65536; kernels=$?
wait $cpu_pid; cpu=$?
"$PY" benchmarks/gpu_check_summary.py "$WORK/cpu" "$WORK/gpu"; summary=$?
echo "gpu-check: gpu study rc=$gpu, cpu study rc=$cpu, kernels rc=$kernels, summary rc=$summary, $((SECONDS - start)) s"
exit $(( gpu != 0 || cpu != 0 || kernels != 0 || summary != 0 ))
