"""Launch configurations of every kernel family, one section each, pruned by a named filter.

Autotuning (GPU only) runs over short lists with bucketed keys; under the interpreter each
family uses one fixed configuration (the interpreter cannot benchmark).
"""
from __future__ import annotations

import triton

# ============================================================================================
# layer_norm (kernels/layer_norm.py)
# ============================================================================================
# One row is held whole in registers, padded to BLOCK_N = next power of two of the width (at
# least 64). Narrow rows are packed BLOCK_M per program up to a tile of 4096-8192 elements, and
# warps are chosen so each thread holds 16-32 elements of a tile: enough bytes in flight per SM
# for a memory-bound kernel, few enough registers that nothing spills (checked by the AOT
# compile test for sm_80 and sm_90).

LAYER_NORM_MIN_BLOCK_N = 64
LAYER_NORM_MAX_WIDTH = 16384
# Backward programs per SM: each writes one fp32 partial row of dweight/dbias, so this trades
# the second pass's work (programs x N) against parallelism in the first.
LAYER_NORM_BWD_PROGRAMS_PER_SM = 4
# Under the interpreter programs run one after another: a few large ones are fastest.
LAYER_NORM_INTERPRET_PROGRAMS = 4


def layer_norm_block_n(n_cols: int) -> int:
    """The BLOCK_N bucket of a width: also the autotune key, so widths share compiled kernels."""
    return max(LAYER_NORM_MIN_BLOCK_N, triton.next_power_of_2(n_cols))


def _ln_warps(tile: int) -> tuple[int, ...]:
    # 32 and 16 elements per thread; 4 warps at least (a program's row reductions are
    # cross-warp anyway), 32 at most (1024 threads).
    return tuple(sorted({min(32, max(4, tile // (32 * per_thread))) for per_thread in (32, 16)}))


def layer_norm_fwd_configs_for(block_n: int) -> list[tuple[int, int]]:
    """(BLOCK_M, num_warps) the forward autotuner may pick for a BLOCK_N bucket."""
    out = []
    for tile in sorted({max(block_n, 4096), max(block_n, 8192)}):
        block_m = tile // block_n
        for warps in _ln_warps(tile):
            if (block_m, warps) not in out:
                out.append((block_m, warps))
    return out


def layer_norm_fwd_autotune_configs() -> list[triton.Config]:
    """Every forward config of every bucket; ``prune_layer_norm_fwd_configs`` keeps a bucket's."""
    seen, configs = set(), []
    block_n = LAYER_NORM_MIN_BLOCK_N
    while block_n <= layer_norm_block_n(LAYER_NORM_MAX_WIDTH):
        for block_m, warps in layer_norm_fwd_configs_for(block_n):
            if (block_m, warps) not in seen:
                seen.add((block_m, warps))
                configs.append(triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=1))
        block_n *= 2
    return configs


def prune_layer_norm_fwd_configs(configs, named_args, **kwargs):
    """Keep the configs of this BLOCK_N bucket, and no BLOCK_M beyond the number of rows (in
    bucketed form) unless nothing else is left."""
    block_n = kwargs.get("BLOCK_N", named_args.get("BLOCK_N"))
    rows_bucket = named_args["rows_bucket"]
    allowed = set(layer_norm_fwd_configs_for(block_n))
    mine = [c for c in configs if (c.kwargs["BLOCK_M"], c.num_warps) in allowed]
    fitting = [c for c in mine if c.kwargs["BLOCK_M"] <= rows_bucket]
    if fitting:
        return fitting
    smallest = min(c.kwargs["BLOCK_M"] for c in mine)
    return [c for c in mine if c.kwargs["BLOCK_M"] == smallest]


def layer_norm_fwd_config(block_n: int, n_rows: int) -> tuple[int, int]:
    """The one forward config used without autotuning (interpreter, CPU tensors): the
    largest tile of the bucket that the rows fill, 16 elements per thread."""
    configs = layer_norm_fwd_configs_for(block_n)
    rows = triton.next_power_of_2(max(n_rows, 1))
    fitting = [c for c in configs if c[0] <= rows] or [min(configs)]
    return max(fitting, key=lambda c: (c[0], c[1]))


def layer_norm_bwd_config(block_n: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps) of the backward: fixed per bucket, never autotuned, so the order of
    the dweight/dbias sums (their bits) does not depend on a timing measurement."""
    tile = max(block_n, 4096)
    return tile // block_n, min(32, max(4, tile // (32 * 16)))


def layer_norm_dwdb_config(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps) of the dweight/dbias reduction over partial rows."""
    block_n = min(256, layer_norm_block_n(n_cols))
    return 32, block_n, 4


# ============================================================================================
