"""Every kernel compiles for the real target (sm_90, H100/H200) without a GPU: shared
memory fits a block and 16-bit operands take Hopper's wgmma path."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "clipdistill.kernels.compile_check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 21  # 7 kernel variants × bf16, fp16, fp32
    for row in rows:
        assert row["fits_shared"], row
        if row["dtype"] in ("bf16", "fp16"):
            assert row["wgmma"], row


def test_compile_check_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipdistill.kernels.compile_check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unset TRITON_INTERPRET" in proc.stderr
