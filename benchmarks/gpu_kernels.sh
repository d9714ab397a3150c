#!/usr/bin/env bash
# Issue 21's one device run (make gpu-kernels): the loss-backend tests on the GPU — no
# interpreter, the issue's shapes — then the GPU benchmark (correctness first, PASS/FAIL per
# goal). Extra arguments go to the benchmark (e.g. --gpu-batches 4096 32768).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export CLIPDISTILL_GPU_TESTS=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 2
"$PY" -m pytest tests/test_loss_backends.py -q -m "not slow" -p no:cacheprovider; tests=$?
timeout 480 "$PY" benchmarks/loss_kernels.py --gpu "$@"; bench=$?
echo "gpu-kernels: tests rc=$tests, benchmark rc=$bench"
exit $(( tests != 0 || bench != 0 ))
