"""Compile every kernel for a real GPU target without a GPU (`python -m clipdistill.kernels.compile_check`).

Prints one JSON line per kernel variant, compiled as a launch would compile it: the host
code's block sizes and launch options, and Triton's launch-time specialisation — pointers
16-byte aligned and integer arguments divisible by 16 marked `tt.divisibility = 16`, as
they are at B = 32768, D = 768 (without it the compiler cannot vectorise the loads, and
reports a different kernel: other shared memory, other spills). For each: registers,
spill bytes (from ptxas -v on the kernel's own PTX), shared memory, whether it fits one
sm_90 block, whether the matrix path is Hopper's (wgmma) and whether operand tiles stream
through 16-byte asynchronous copies (cp.async: only with the specialisation). Must run
*without* TRITON_INTERPRET.

Documented spills (docs/kernels.md): fwd[clip] and fwd[clip+kd] with 16-bit operands, ≤ 16
bytes at 255 registers; every other variant 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_SHARED_SM90 = 227 * 1024  # bytes of shared memory one block may use on H100/H200
# Integer arguments at the size, B = 32768, D = 768 (teacher 768), chunk 4096.
EXAMPLE_INTS = {"M": 32768, "N": 32768, "D": 768, "DT": 768, "stride_a": 768, "stride_b": 768, "stride_ta": 768,
                "stride_tb": 768, "stride_g": 4096, "n_start": 4096, "width": 4096, "offset": 0, "NPROG": 264}
F32 = "*fp32"


def _fwd_sig(ptr):
    return {"a_ptr": ptr, "b_ptr": ptr, "ta_ptr": ptr, "tb_ptr": ptr, "scale_ptr": F32, "bias_ptr": F32,
            "tscale_ptr": F32, "row_lse_ptr": F32, "col_part_ptr": F32, "kd_row_ptr": F32, "loss_part_ptr": F32,
            "M": "i32", "N": "i32", "D": "i32", "DT": "i32", "stride_a": "i32", "stride_b": "i32",
            "stride_ta": "i32", "stride_tb": "i32", "inv_tau": "fp32", "NPROG": "i32"}


def _grad_sig(ptr, gptr):
    return {"a_ptr": ptr, "b_ptr": ptr, "ta_ptr": ptr, "tb_ptr": ptr, "scale_ptr": F32, "bias_ptr": F32,
            "tscale_ptr": F32, "coef_ptr": F32, "row_lse_ptr": F32, "col_lse_ptr": F32, "kd_row_ptr": F32,
            "kd_col_lse_ptr": F32, "g_ptr": gptr, "part_ptr": F32, "M": "i32", "N": "i32", "D": "i32", "DT": "i32",
            "stride_a": "i32", "stride_b": "i32", "stride_ta": "i32", "stride_tb": "i32", "stride_g": "i32",
            "n_start": "i32", "width": "i32", "offset": "i32", "inv_tau": "fp32"}


def variants():
    """(name, dtype, kernel, signature, constexprs, launch options) for every launched combination."""
    from clipdistill.kernels import contrastive as C

    modes = (("clip", C.MODE_CLIP, False), ("clip+kd", C.MODE_CLIP, True), ("rows", C.MODE_ROWS, False),
             ("siglip", C.MODE_SIGLIP, False))
    for dtype in ("bf16", "fp16", "fp32"):
        ptr = f"*{dtype}"
        for label, mode, kd in modes:
            consts = {"MODE": mode, "HAS_KD": kd, "CAST": False, "IEEE": dtype == "fp32"}
            half = dtype != "fp32"
            yield (f"fwd[{label}]", dtype, C._fwd_kernel, _fwd_sig(ptr), {**consts, **C.blocks("fwd", kd, half)},
                   C.FWD_OPTIONS)
            yield (f"grad[{label}]", dtype, C._grad_kernel, _grad_sig(ptr, ptr),
                   {**consts, **C.blocks("grad", kd, half)}, C.GRAD_OPTIONS)


def launch_attrs(fn, sig: dict) -> dict:
    """Triton's launch-time specialisation for the example arguments: every pointer aligned
    (torch allocations are), every integer divisible by 16 marked so."""
    from triton.backends.compiler import BaseBackend

    attrs = {}
    for name, ty in sig.items():
        idx = (fn.arg_names.index(name),)
        if ty.startswith("*"):
            attrs[idx] = [["tt.divisibility", 16]]
        elif ty == "i32" and BaseBackend.get_int_specialization(EXAMPLE_INTS[name], align=True) == "D" \
                and EXAMPLE_INTS[name] != 0:
            attrs[idx] = [["tt.divisibility", 16]]
    return attrs


def ptxas_usage(ptx: str, arch: str) -> dict:
    """Registers and spill bytes of the PTX, from the ptxas bundled with Triton (same as the JIT)."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    stores = re.search(r"(\d+) bytes spill stores", out)
    loads = re.search(r"(\d+) bytes spill loads", out)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(stores.group(1)) if stores else 0,
            "spill_load_bytes": int(loads.group(1)) if loads else 0}


def compile_all(arch: int = 90, warp_size: int = 32):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, warp_size)
    for name, dtype, fn, sig, consts, options in variants():
        full_sig = {**sig, **{k: "constexpr" for k in consts}}
        src = ASTSource(fn=fn, signature=full_sig, constexprs=consts, attrs=launch_attrs(fn, sig))
        kernel = triton.compile(src, target=target, options=dict(options))
        ptx = kernel.asm["ptx"]
        usage = ptxas_usage(ptx, f"sm_{arch}a")
        yield {"kernel": name, "dtype": dtype, **usage, "shared_bytes": kernel.metadata.shared,
               "fits_shared": kernel.metadata.shared <= MAX_SHARED_SM90, "wgmma": "wgmma" in ptx,
               "mma": "mma.sync" in ptx or "wgmma" in ptx, "async_copy": "cp.async" in ptx,
               "num_warps": options["num_warps"], "block": [consts["BLOCK_M"], consts["BLOCK_N"], consts["BLOCK_K"]]}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_check: unset TRITON_INTERPRET (it compiles for a real GPU target)")
    for row in compile_all():
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
