"""Every launch configuration a GPU may run the LayerNorm kernels with, and the GPU's launch path.

1. Each width bucket's forward autotune candidates, its fixed backward configuration (the
   register kernel or, past 4096, the chunked one) and the dweight/dbias reduction's run once in
   the interpreter, forced in place of the interpreter's own, against float64 on an odd width
   and a row count that ends in a partial tile (fp32; one bucket in fp16 too), for the residual
   add with and without a layer scale (whose variants of the same kernels carry more arrays).
2. The autotuned forward and the GPU's backward grid, simulated in the interpreter
   (``tests/_simulated_gpu.py``): the pruned candidates are timed, the fastest runs, a failing
   candidate is reported by a warning naming it.
"""
from __future__ import annotations

import pytest
import torch
import triton

from fastvit.kernels import _autotune
from fastvit.kernels import _configs as C
from fastvit.kernels import layer_norm as K
from fastvit.kernels import layer_norm_bwd as KB
from tests._simulated_gpu import clear_tuning, record_launches, simulated_gpu, skip_on_gpu
from tests.test_layer_norm_kernel import _check_all, _inputs
from tests.test_layer_scale_add_layer_norm import check_scaled, make_inputs

# An odd width inside each BLOCK_N bucket (b/2 < width <= b).
WIDTHS = {64: 50, 128: 100, 256: 200, 512: 300, 1024: 1000, 2048: 1500, 4096: 3000, 8192: 5000, 16384: 10000}
CASES = [(block_n, cfg) for block_n in C.layer_norm_block_ns() for cfg in C.layer_norm_fwd_configs_for(block_n)]


@pytest.fixture(autouse=True)
def _poison():
    with K.poisoned_outputs():
        yield


def test_widths_cover_every_bucket():
    assert sorted(WIDTHS) == C.layer_norm_block_ns()
    assert all(C.layer_norm_block_n(w) == b for b, w in WIDTHS.items())


@skip_on_gpu
@pytest.mark.parametrize("block_n,config", CASES, ids=[f"n{b}-m{m}-w{w}" for b, (m, w) in CASES])
def test_every_gpu_configuration_matches_float64(block_n, config, monkeypatch, device):
    block_m, warps = config
    forced = triton.Config({"BLOCK_M": block_m}, num_warps=warps, num_stages=1)
    monkeypatch.setattr(K._layer_norm_fwd_tuned, "interpret_config", lambda args: forced)
    monkeypatch.setattr(C, "layer_norm_interpret_bwd_config", C.layer_norm_bwd_config)
    monkeypatch.setattr(C, "layer_norm_interpret_dwdb_config", C.layer_norm_dwdb_config)
    bwd = C.layer_norm_bwd_config(block_n)
    launches = record_launches(monkeypatch)  # the backward must run with the GPU configuration
    # Two forward tiles, the second partial; the same for the backward's row loop where its tile
    # holds several rows.
    rows = max(block_m, bwd.block_m) + 1 if max(block_m, bwd.block_m) > 1 else 3
    dtypes = [torch.float32] + ([torch.float16] if block_n == 1024 else [])
    for dtype in dtypes:
        x, r, w, b = _inputs((rows, WIDTHS[block_n]), dtype, residual=True, device=device)
        _check_all("add", x, r, w, b)
        check_scaled(make_inputs((rows, WIDTHS[block_n]), dtype, device=device), what=f"layer scale n{block_n}")
    name = "_layer_norm_bwd_wide" if bwd.wide else "_layer_norm_bwd"
    launched = [launch.meta for launch in launches if launch.kernel == name]
    assert len(launched) == 2 * len(dtypes)
    assert all(m["BLOCK_N"] == bwd.block_n and m["num_warps"] == bwd.num_warps for m in launched)


# ----------------------------------------------------------------------------------------------
# The GPU's launch path, simulated
# ----------------------------------------------------------------------------------------------


def _fwd_config(launch):
    return launch.meta["BLOCK_M"], launch.meta["num_warps"]


@skip_on_gpu
def test_simulated_gpu_autotunes_the_forward_and_uses_the_gpu_backward(monkeypatch, device):
    width, rows = 768, 300  # bucket 1024: candidates (4, 8) and (8, 16); rows_bucket 512 keeps both
    candidates = C.layer_norm_fwd_configs_for(1024)
    assert len(candidates) == 2
    winner = candidates[1]

    def ranking(launched):
        (launch,) = launched
        return 1.0 if _fwd_config(launch) == winner else 3.0

    x, r, w, b = _inputs((rows, width), torch.float32, residual=True, device=device)
    clear_tuning(K._layer_norm_fwd_tuned)
    try:
        with simulated_gpu(monkeypatch, ranking, multi_processor_count=2) as (launches, timed):
            _check_all("add", x, r, w, b)
            assert [_fwd_config(t[0]) for t in timed] == candidates
            fwd = [launch for launch in launches if launch.kernel == "_layer_norm_fwd"]
            assert _fwd_config(fwd[-1]) == winner and len(fwd) == len(candidates) + 1
            # The backward takes the GPU's fixed configuration, one program per SM slot.
            bwd_cfg = C.layer_norm_bwd_config(1024)
            (bwd,) = [launch for launch in launches if launch.kernel == "_layer_norm_bwd"]
            assert (bwd.meta["BLOCK_M"], bwd.meta["num_warps"]) == (bwd_cfg.block_m, bwd_cfg.num_warps)
            assert KB._bwd_programs(rows, bwd_cfg.block_m, bwd_cfg.programs_per_sm, x.device)[0] == min(
                2 * bwd_cfg.programs_per_sm, -(-rows // bwd_cfg.block_m))
    finally:
        clear_tuning(K._layer_norm_fwd_tuned)


@skip_on_gpu
def test_simulated_gpu_warns_about_a_failing_configuration(monkeypatch, device):
    candidates = C.layer_norm_fwd_configs_for(1024)
    bad = triton.Config({"BLOCK_M": candidates[0][0]}, num_warps=candidates[0][1], num_stages=1)
    x, _, w, b = _inputs((64, 1000), torch.float32, device=device)
    clear_tuning(K._layer_norm_fwd_tuned)
    try:
        with simulated_gpu(monkeypatch, lambda launched: 1.0,
                           fail=lambda launch: launch.kernel == "_layer_norm_fwd"
                           and _fwd_config(launch) == candidates[0]) as (launches, _):
            with pytest.warns(_autotune.AutotuneWarning) as caught:
                y, _, _ = K.layer_norm_fwd(x, w, b, 1e-5)
            (message,) = [str(c.message) for c in caught]
            assert "_layer_norm_fwd" in message and _autotune.config_label(bad) in message
            assert _fwd_config(launches[-1]) == candidates[1]
    finally:
        clear_tuning(K._layer_norm_fwd_tuned)
    ref = torch.nn.functional.layer_norm(x.double(), (1000,), w.double(), b.double(), 1e-5)
    assert (y.double() - ref).abs().max() / ref.abs().max() <= 1e-5
