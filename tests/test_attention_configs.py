"""Every launch configuration a GPU may run the attention kernels with, and the GPU's launch path.

1. Each configuration the autotuner may pick for the forward, dK/dV and dQ (the union over
   architecture families, head-dim widths, dtypes and dropout of what ``kernels/_configs.py``
   keeps) runs once in the interpreter, forced in place of the interpreter's own, against float64
   on a shape that ends in a partial block for every tile size (N = 150) at a head dim that is
   not a power of two: 72, 80, 88, 96, 104, 112 in turn (two or three chunks, masked tails at
   72, 88 and 104). AMD's compile hints (waves_per_eu, matrix_instr_nonkdim) are options of the hip
   compiler, not kernel arguments: the interpreter runs the tile without them.
2. The autotuned path itself (``triton.autotune`` over the pruned GPU candidates, timed by
   ``_autotune.time_candidate``), simulated in the interpreter (``tests/_simulated_gpu.py``):
   which candidates are timed, which wins, that the winner runs, and the warning when one fails.
"""
from __future__ import annotations

import math

import pytest
import torch
import triton

from fastvit.kernels import _autotune, _configs
from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from tests._simulated_gpu import clear_tuning, simulated_gpu, skip_on_gpu
from tests._tolerances import assert_close_to_reference, rel_err

TUNED = {"fwd": K._attn_fwd_tuned, "dkdv": KB._attn_bwd_dkdv_tuned, "dq": KB._attn_bwd_dq_tuned}
NAMES = ("out", "lse", "dq", "dk", "dv")


def _reachable(kernel: str) -> list:
    """Every configuration the prune filter can keep for ``kernel``, over all families, head-dim
    widths (every multiple of 16 up to 256: the chunked widths), dtypes and dropout."""
    seen = {}
    for family in _configs.ARCH_FAMILIES:
        for width in range(16, 257, 16):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for dropout in (False, True):
                    for c in _configs.attention_configs(kernel, width, dtype, dropout, family=family):
                        seen.setdefault(_autotune.config_key(c), c)
    return list(seen.values())


def _tiles(kernel: str) -> list:
    """``_reachable`` by tile: warps, stages and compile hints change nothing in the interpreter,
    which runs a configuration as its BLOCK_M x BLOCK_N tiling."""
    seen = {}
    for c in _reachable(kernel):
        seen.setdefault((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]), c)
    return list(seen.values())


CASES = [(kernel, c) for kernel in TUNED for c in _tiles(kernel)]
CHUNKED_HEAD_DIMS = (72, 80, 88, 96, 104, 112)


def _interpretable(config):
    """The config without keywords that are compile options rather than kernel arguments."""
    meta = {k: v for k, v in config.kwargs.items() if k in ("BLOCK_M", "BLOCK_N")}
    return triton.Config(meta, num_warps=config.num_warps, num_stages=config.num_stages)


def _run(q, k, v, dout, scale, p=0.0, seed=0):
    out, lse = K.attention_fwd(q, k, v, sm_scale=scale, dropout_p=p, seed=seed,
                               out=torch.full_like(q, float("nan")),
                               lse=torch.full(q.shape[:3], float("nan"), device=q.device))
    grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    dq, dk, dv = K.attention_bwd(dout, q, k, v, out, lse, sm_scale=scale, dropout_p=p, seed=seed,
                                 dq=grads[0], dk=grads[1], dv=grads[2])
    return out, lse, dq, dk, dv


def _reference(q, k, v, dout, scale, dtype, keep=None, p=0.0):
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * scale
    probs = torch.softmax(scores, -1)
    if keep is not None:
        probs = probs * keep.to(dtype) / (1.0 - p)
    out = probs @ v
    out.backward(dout.to(dtype))
    return out.detach(), torch.logsumexp(scores.detach().double(), -1), q.grad, k.grad, v.grad


def _check(got, q, k, v, dout, scale, keep=None, p=0.0):
    ref = _reference(q, k, v, dout, scale, torch.float64, keep, p)
    low = None if q.dtype == torch.float32 else _reference(q, k, v, dout, scale, q.dtype, keep, p)
    for i, name in enumerate(NAMES):
        if name == "lse":  # fp32 statistics whatever the input dtype: only the inputs' rounding
            assert rel_err(got[i], ref[i]) <= 1e-5, name
            continue
        assert_close_to_reference(got[i], ref[i], dtype=q.dtype, lowp_baseline=None if low is None else low[i],
                                  what=name)


@skip_on_gpu
@pytest.mark.parametrize("kernel,config", CASES,
                         ids=[f"{k}-{_autotune.config_label(c).replace(', ', '-')}" for k, c in CASES])
def test_every_gpu_configuration_matches_float64(kernel, config, monkeypatch, device):
    """fp32 for every configuration; the first of each kernel also in fp16 with dropout."""
    monkeypatch.setattr(TUNED[kernel], "interpret_config", lambda args: _interpretable(config))
    B, H, N = 1, 2, 150
    D = CHUNKED_HEAD_DIMS[CASES.index((kernel, config)) % len(CHUNKED_HEAD_DIMS)]
    first = _autotune.config_key(config) == _autotune.config_key(_reachable(kernel)[0])
    dtypes = [torch.float32] + ([torch.float16] if first else [])
    for dtype in dtypes:
        q, k, v = (torch.randn(B, H, N, D, device=device).to(dtype) for _ in range(3))
        dout = torch.randn(B, H, N, D, device=device).to(dtype)
        p = 0.2 if dtype == torch.float16 else 0.0
        keep = K.attention_dropout_mask(B, H, N, N, p, 77, device=device) if p else None
        _check(_run(q, k, v, dout, 1 / math.sqrt(D), p, 77), q, k, v, dout, 1 / math.sqrt(D), keep, p)


# ----------------------------------------------------------------------------------------------
# The GPU's autotuned launch, simulated
# ----------------------------------------------------------------------------------------------


def _tile(launch):
    return launch.meta["BLOCK_M"], launch.meta["BLOCK_N"]


@skip_on_gpu
def test_simulated_gpu_times_the_pruned_candidates_and_runs_the_winner(monkeypatch, device):
    B, H, N, D = 1, 2, 70, 64
    q, k, v = (torch.randn(B, H, N, D, device=device).half() for _ in range(3))
    dout = torch.randn(B, H, N, D, device=device).half()
    kept = {kernel: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in _configs.attention_configs(
        kernel, 64, torch.float16, False)] for kernel in TUNED}
    assert all(len(v) == 2 for v in kept.values()), kept  # the test needs a real choice
    # Rank the second candidate of each kernel first: the autotuner's own preference (first) loses.
    winners = {kernel: tiles[1] for kernel, tiles in kept.items()}

    def ranking(launched):
        (launch,) = launched
        kernel = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "dkdv", "_attn_bwd_dq": "dq"}[launch.kernel]
        return 1.0 if _tile(launch) == winners[kernel] else 2.0

    clear_tuning(*TUNED.values())
    try:
        with simulated_gpu(monkeypatch, ranking) as (launches, timed):
            got = _run(q, k, v, dout, D ** -0.5)
            # Each kernel: its two pruned candidates timed, in the autotuner's order.
            by_kernel = {}
            for t in timed:
                by_kernel.setdefault(t[0].kernel, []).append(_tile(t[0]))
            assert by_kernel == {"_attn_fwd": kept["fwd"], "_attn_bwd_dkdv": kept["dkdv"], "_attn_bwd_dq": kept["dq"]}
            # ...then the winner is what runs (the last launch of each kernel).
            last = {launch.kernel: _tile(launch) for launch in launches if launch.kernel in by_kernel}
            assert {kern: tile for kern, tile in last.items()} == {
                "_attn_fwd": winners["fwd"], "_attn_bwd_dkdv": winners["dkdv"], "_attn_bwd_dq": winners["dq"]}
            # A second call with a length in the same power-of-two bucket re-uses the result.
            n_timed = len(timed)
            K.attention_fwd(q[:, :, :65], k, v, sm_scale=0.1)
            assert len(timed) == n_timed
    finally:
        clear_tuning(*TUNED.values())
    _check(got, q, k, v, dout, D ** -0.5)


@skip_on_gpu
def test_simulated_gpu_warns_about_a_failing_configuration(monkeypatch, device):
    q, k, v = (torch.randn(1, 1, 40, 64, device=device).half() for _ in range(3))
    first, second = _configs.attention_configs("fwd", 64, torch.float16, False)
    bad = (first.kwargs["BLOCK_M"], first.kwargs["BLOCK_N"])

    clear_tuning(K._attn_fwd_tuned)
    try:
        with simulated_gpu(monkeypatch, lambda launched: 1.0,
                           fail=lambda launch: launch.kernel == "_attn_fwd" and _tile(launch) == bad) as (launches, _):
            with pytest.warns(_autotune.AutotuneWarning) as caught:
                out, _ = K.attention_fwd(q, k, v, sm_scale=0.125)
            messages = [str(w.message) for w in caught]
            assert len(messages) == 1 and "_attn_fwd" in messages[0] and _autotune.config_label(first) in messages[0]
            assert "OutOfResources" in messages[0]
            assert _tile(launches[-1]) == (second.kwargs["BLOCK_M"], second.kwargs["BLOCK_N"])
    finally:
        clear_tuning(K._attn_fwd_tuned)
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.125, -1) @ v.double()
    low = torch.softmax(q @ k.transpose(-1, -2) * 0.125, -1) @ v
    assert_close_to_reference(out, ref, dtype=torch.float16, lowp_baseline=low)
