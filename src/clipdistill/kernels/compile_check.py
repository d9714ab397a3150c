"""Compile every kernel for a real GPU target without a GPU (`python -m clipdistill.kernels.compile_check`).

Prints one JSON line per kernel variant, compiled with the same launch options the host
code uses: shared memory, whether it fits one sm_90 block, and whether the matrix path is
Hopper's (wgmma). Must run *without* TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import sys

MAX_SHARED_SM90 = 227 * 1024  # bytes of shared memory one block may use on H100/H200


def variants():
    from clipdistill.kernels import contrastive as C
    from clipdistill.kernels import siglip as S

    blocks = C._blocks(1, 1, 1)
    fwd_blocks = {k: blocks[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
    for dtype in ("bf16", "fp16", "fp32"):
        ptr = f"*{dtype}"
        f32 = "*fp32"
        for symmetric, kd in ((True, False), (True, True), (False, False)):
            sig = {"a_ptr": ptr, "b_ptr": ptr, "ta_ptr": ptr, "tb_ptr": ptr, "scale_ptr": f32, "bias_ptr": f32,
                   "tscale_ptr": f32, "row_lse_ptr": f32, "col_max_ptr": f32, "col_sum_ptr": f32,
                   "kd_row_ptr": f32, "kd_col_ptr": f32, "M": "i32", "N": "i32", "D": "i32", "DT": "i32",
                   "stride_a": "i32", "stride_b": "i32", "stride_ta": "i32", "stride_tb": "i32", "inv_tau": "fp32"}
            consts = {"SYMMETRIC": symmetric, "HAS_KD": kd, "CAST": False, **fwd_blocks}
            yield f"contrastive_fwd[sym={symmetric},kd={kd}]", dtype, C._fwd_kernel, sig, consts
            sig = {"a_ptr": ptr, "b_ptr": ptr, "ta_ptr": ptr, "tb_ptr": ptr, "scale_ptr": f32, "bias_ptr": f32,
                   "tscale_ptr": f32, "grad_ptr": f32, "row_lse_ptr": f32, "col_lse_ptr": f32, "kd_row_ptr": f32,
                   "kd_col_lse_ptr": f32, "da_ptr": f32, "db_ptr": f32, "dscale_part_ptr": f32,
                   "dbias_part_ptr": f32, "M": "i32", "N": "i32", "D": "i32", "DT": "i32", "stride_a": "i32",
                   "stride_b": "i32", "stride_ta": "i32", "stride_tb": "i32", "offset": "i32", "inv_tau": "fp32",
                   "tau": "fp32"}
            consts = {"SYMMETRIC": symmetric, "HAS_KD": kd, "CAST": False, **blocks}
            yield f"contrastive_bwd[sym={symmetric},kd={kd}]", dtype, C._bwd_kernel, sig, consts
        sig = {"a_ptr": ptr, "b_ptr": ptr, "scale_ptr": f32, "bias_ptr": f32, "loss_part_ptr": f32, "da_ptr": f32,
               "db_ptr": f32, "dscale_part_ptr": f32, "dbias_part_ptr": f32, "M": "i32", "N": "i32", "D": "i32",
               "stride_a": "i32", "stride_b": "i32"}
        yield "siglip", dtype, S._siglip_kernel, sig, {"CAST": False, **blocks}


def compile_all(arch: int = 90, warp_size: int = 32):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, warp_size)
    for name, dtype, fn, sig, consts in variants():
        full_sig = {**sig, **{k: "constexpr" for k in consts}}
        from clipdistill.kernels.contrastive import BWD_OPTIONS, FWD_OPTIONS

        options = FWD_OPTIONS if "fwd" in name else BWD_OPTIONS
        kernel = triton.compile(ASTSource(fn=fn, signature=full_sig, constexprs=consts), target=target,
                                options=dict(options))
        ptx = kernel.asm["ptx"]
        yield {"kernel": name, "dtype": dtype, "shared_bytes": kernel.metadata.shared,
               "fits_shared": kernel.metadata.shared <= MAX_SHARED_SM90,
               "wgmma": "wgmma" in ptx, "mma": "mma.sync" in ptx or "wgmma" in ptx}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile_check: unset TRITON_INTERPRET (it compiles for a real GPU target)")
    for row in compile_all():
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
