"""Variable-length attention (kernels/attention_varlen.py, fastvit/ops/_varlen_attention_triton.py,
fastvit/ops/varlen_attention.py): packed sequences against attention on each sequence alone.

Oracle: each sequence's softmax(q k^T * scale) v in float64. fp32 within 1e-5 relative error,
fp16/bf16 within 2x the error of the same per-sequence PyTorch in that dtype. Launcher outputs are
NaN-poisoned, so a token the kernels skip shows. Heads are few and head dims small where the
lengths are long: the interpreter runs programs one by one.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import triton

import fastvit.ops as ops
from fastvit.kernels import _autotune, _configs
from fastvit.kernels import attention as KD
from fastvit.kernels import attention_varlen as KV
from fastvit.kernels import attention_varlen_bwd as KVB
from fastvit.ops import _attention_triton as TA
from fastvit.ops import _varlen_attention_triton  # noqa: F401  (registers the fastvit::varlen_* custom ops)
from tests._simulated_gpu import clear_tuning, simulated_gpu, skip_on_gpu
from tests._tolerances import assert_close_to_reference, rel_err

NAMES = ("out", "lse", "dq", "dk", "dv")
MIX = (1, 2, 17, 197, 577)


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def _inputs(lengths, H, D, dtype, device):
    T = sum(lengths)
    return tuple(torch.randn(T, H, D, device=device).to(dtype) for _ in range(4))  # q, k, v, dout


def _reference(q, k, v, dout, cu, scale, dtype=torch.float64, keep=None, p=0.0):
    """out, lse (H, T), dq, dk, dv of per-sequence PyTorch attention in ``dtype``; ``keep`` (H, T, T)
    applies the kernel's dropout mask (its diagonal blocks) with the 1/(1-p) rescale."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    outs, lses = [], []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in leaves)
        scores = (qs @ ks.transpose(-2, -1)) * scale
        probs = torch.softmax(scores, -1)
        if keep is not None:
            probs = probs * keep[:, a:b, a:b].to(dtype) / (1.0 - p)
        outs.append((probs @ vs).transpose(0, 1))
        lses.append(torch.logsumexp(scores.detach().double(), -1))
    out = torch.cat(outs)
    out.backward(dout.to(dtype))
    return (out.detach(), torch.cat(lses, 1), *(t.grad for t in leaves))


def _launch(q, k, v, dout, cu, scale, p=0.0, seed=0, max_seqlen=None):
    T, H, D = q.shape
    max_seqlen = max_seqlen or int((cu[1:] - cu[:-1]).max())
    table = KV.varlen_block_table(cu, T)
    out, lse = KV.varlen_attention_fwd(q, k, v, cu, table, max_seqlen=max_seqlen, sm_scale=scale, dropout_p=p,
                                       seed=seed, out=torch.full_like(q, float("nan")),
                                       lse=torch.full((H, T), float("nan"), device=q.device))
    grads = [torch.full_like(q, float("nan")) for _ in range(3)]
    dq, dk, dv = KVB.varlen_attention_bwd(dout, q, k, v, out, lse, cu, table, max_seqlen=max_seqlen, sm_scale=scale,
                                         dropout_p=p, seed=seed, dq=grads[0], dk=grads[1], dv=grads[2])
    return out, lse, dq, dk, dv


def _check_all(got, ref, dtype, lowp=None):
    for i, name in enumerate(NAMES):
        if name == "lse":  # fp32 statistics: the rounding of the inputs is the only error
            bound = 1e-6 if dtype == torch.float32 else 1e-5
            assert torch.isfinite(got[i]).all() and rel_err(got[i], ref[i]) <= bound, name
            continue
        assert_close_to_reference(got[i], ref[i], dtype=dtype, lowp_baseline=None if lowp is None else lowp[i],
                                  what=name)


# ----------------------------------------------------------------------------------------------
# Packed equals each sequence alone
# ----------------------------------------------------------------------------------------------

FP32_CASES = [
    (MIX, 1, 16),
    ((17, 1, 65, 2), 2, 80),               # head_dim in two chunks, 64 + 16
    ((9, 30), 1, 112),                     # three chunks, 64 + 32 + 16
    ((1,) * 12 + (2,) * 6 + (3,) * 5, 1, 8),  # many tiny sequences: many per block of 128
    ((5, 33), 1, 256), ((3, 1, 7), 2, 1),  # the largest and the smallest head_dim
    ((130, 129, 128, 127), 1, 24),         # block boundaries within and across sequences
]


@pytest.mark.parametrize("lengths,H,D", FP32_CASES, ids=[f"S{len(c[0])}-H{c[1]}-D{c[2]}" for c in FP32_CASES])
def test_fp32_matches_each_sequence_alone(lengths, H, D, device):
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float32, device)
    got = _launch(q, k, v, dout, cu, D ** -0.5)
    _check_all(got, _reference(q, k, v, dout, cu, D ** -0.5), torch.float32)


@pytest.mark.parametrize("dtype,lengths,H,D", [(torch.float16, MIX, 1, 64), (torch.bfloat16, (2, 17, 197, 65), 1, 80)])
def test_low_precision_within_2x_of_pytorch(dtype, lengths, H, D, device):
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, dtype, device)
    got = _launch(q, k, v, dout, cu, D ** -0.5)
    ref = _reference(q, k, v, dout, cu, D ** -0.5)
    _check_all(got, ref, dtype, _reference(q, k, v, dout, cu, D ** -0.5, dtype=dtype))


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_one_sequence_equals_the_dense_kernel(p, device):
    """Same tiles, same RNG counter ((seed, head, query token, key token)): bitwise the dense op."""
    N, H, D = 150, 2, 32
    q, k, v, dout = _inputs((N,), H, D, torch.float32, device)
    got = _launch(q, k, v, dout, _cu((N,), device), D ** -0.5, p=p, seed=1234)
    dense = [t.transpose(0, 1)[None] for t in (q, k, v, dout)]
    out, lse = KD.attention_fwd(*dense[:3], sm_scale=D ** -0.5, dropout_p=p, seed=1234)
    grads = KD.attention_bwd(dense[3], *dense[:3], out, lse, sm_scale=D ** -0.5, dropout_p=p, seed=1234)
    for name, a, b in zip(NAMES, got, (out, lse, *grads)):
        assert torch.equal(a, b[0].transpose(0, 1) if b.dim() == 4 else b[0]), name


def test_deterministic_gradients(device):
    """Every program owns the rows it writes (no atomics): two runs are bitwise equal."""
    lengths, H, D = (1, 40, 17), 2, 16
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float16, device)
    first, second = (_launch(q, k, v, dout, cu, 0.3, p=0.1, seed=3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ----------------------------------------------------------------------------------------------
# The op: dropout, the packed-qkv form, lse, backends
# ----------------------------------------------------------------------------------------------


def test_dropout_reproducible_from_the_seed_and_regenerated_in_backward(device):
    lengths, H, D, p = (1, 17, 40), 2, 16, 0.3
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(99)
    out = ops.varlen_attention(*leaves, cu, 40, dropout_p=p, backend="triton")
    out.backward(dout)
    torch.manual_seed(99)
    seed = int(TA.draw_seed(p))
    keep = KD.attention_dropout_mask(1, H, sum(lengths), sum(lengths), p, seed, device=device)[0]
    ref = _reference(q, k, v, dout, cu, D ** -0.5, keep=keep, p=p)
    for name, got, expected in zip(("out", "dq", "dk", "dv"), (out, *(t.grad for t in leaves)), (ref[0], *ref[2:])):
        assert rel_err(got, expected) <= 1e-5, name
    torch.manual_seed(99)
    again = ops.varlen_attention(q, k, v, cu, 40, dropout_p=p, backend="triton")
    other = ops.varlen_attention(q, k, v, cu, 40, dropout_p=p, backend="triton")
    assert torch.equal(again, out.detach()) and not torch.equal(other, again)


@pytest.mark.parametrize("dtype,D", [(torch.float32, 16), (torch.float16, 72)])
def test_packed_qkv_form(dtype, D, device):
    """fp16 at head_dim 72: strides multiples of 8 but not 16 (STRIDE_ALIGN), a masked chunk."""
    lengths, H = (1, 50, 17), 2
    cu, T = _cu(lengths, device), sum(lengths)
    qkv = torch.randn(T, 3 * H * D, device=device).to(dtype)
    dout = torch.randn(T, H * D, device=device).to(dtype)
    leaf = qkv.clone().requires_grad_()
    out, lse = ops.varlen_qkv_attention(leaf, H, cu, 50, backend="triton", return_lse=True)
    assert out.shape == (T, H * D) and out.is_contiguous() and lse.shape == (H, T) and lse.dtype == torch.float32
    out.backward(dout)

    def oracle(dt):
        x = qkv.detach().to(dt).requires_grad_()
        q, k, v = x.view(T, 3, H, D).unbind(1)
        res = _reference(q, k, v, dout.view(T, H, D), cu, D ** -0.5, dtype=dt)
        o = res[0]
        x.grad = torch.cat([g.reshape(T, 1, H * D) for g in res[2:]], 1).reshape(T, 3 * H * D)
        return o.reshape(T, H * D), x.grad, res[1]

    ref = oracle(torch.float64)
    low = oracle(dtype) if dtype != torch.float32 else (None, None, None)
    assert_close_to_reference(out, ref[0], dtype=dtype, lowp_baseline=low[0])
    assert_close_to_reference(leaf.grad, ref[1], dtype=dtype, lowp_baseline=low[1], what="dqkv")
    assert rel_err(lse, ref[2]) <= 1e-5


def test_lse_gradient_and_per_image_attention_rows(device):
    lengths, H, D = (5, 30), 2, 16
    cu = _cu(lengths, device)
    q, k, v, _ = _inputs(lengths, H, D, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.varlen_attention(*leaves, cu, 30, backend="triton", return_lse=True)
    w = torch.randn_like(lse)
    (out.sum() + (lse * w).sum()).backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    total = 0
    for a, b in ((0, 5), (5, 35)):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in ref)
        s = qs @ ks.transpose(-2, -1) / 4.0
        total = total + (torch.softmax(s, -1) @ vs).sum() + (torch.logsumexp(s, -1) * w[:, a:b].double()).sum()
    total.backward()
    for leaf, r in zip(leaves, ref):
        assert rel_err(leaf.grad, r.grad) <= 1e-5
    # Image 1's CLS row from its lse slice, as for a dense batch of one.
    qs, ks = (t[5:35].transpose(0, 1)[None] for t in (q, k))
    row = ops.cls_attention(qs, ks, lse[None, :, 5:35])
    expected = torch.softmax(qs[:, :, 0:1].double() @ ks.double().transpose(-2, -1) / 4.0, -1)[:, :, 0]
    assert rel_err(row, expected) <= 1e-5


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_reference_backends(backend, device):
    lengths, H, D = (3, 3, 20, 1, 1), 2, 8
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.varlen_attention(*leaves, cu, 20, backend=backend, return_lse=True)
    out.backward(dout)
    _check_all((out, lse, *(t.grad for t in leaves)), _reference(q, k, v, dout, cu, D ** -0.5), torch.float32)
    # float64 runs PyTorch on the triton backend too (the ops-wide rule): exact.
    q64 = q.double()
    assert rel_err(ops.varlen_attention(q64, q64, q64, cu, 20, backend="triton"),
                   _reference(q64, q64, q64, dout, cu, D ** -0.5)[0]) <= 1e-12


def test_autocast_runs_in_the_autocast_dtype(device):
    lengths = (9, 24)
    q, k, v, _ = (t.requires_grad_() for t in _inputs(lengths, 2, 16, torch.float32, device))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.varlen_attention(q, k, v, _cu(lengths, device), 24, backend="triton")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------------------------
# The block table, every GPU configuration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [(1,), (1, 2, 17, 197, 577), (16, 16, 15, 129), (3,) * 50])
def test_block_table_maps_every_block_once(lengths, device):
    cu, T, S = _cu(lengths, device), sum(lengths), len(lengths)
    table = KV.varlen_block_table(cu, T).cpu()
    for r, bm in enumerate(KV.TABLE_BLOCKS):
        expected = [(s, a + j) for s, (a, n) in enumerate(zip(cu.tolist(), lengths)) for j in range(0, n, bm)]
        programs = (T + S * (bm - 1)) // bm  # the grid: from shapes alone
        assert programs >= len(expected) and table.shape[2] >= programs
        got = list(zip(table[r, 0, :programs].tolist(), table[r, 1, :programs].tolist()))
        assert got[:len(expected)] == expected and all(s == -1 for s, _ in got[len(expected):])


def test_block_table_stays_in_bounds_for_bad_boundaries(device):
    """Unchecked values (a GPU does not read them on the host) never index outside [0, T]."""
    for bad in ([0, 50, 10, 1000], [-5, 3, 2, 7], [0, 0, 0, 20]):
        cu = torch.tensor(bad, dtype=torch.int32, device=device)
        table = KV.varlen_block_table(cu, 20).cpu()
        assert ((table[:, 0] >= -1) & (table[:, 0] < 3)).all() and ((table[:, 1] >= 0) & (table[:, 1] <= 20)).all()


TUNED = {"fwd": KV._varlen_fwd_tuned, "dkdv": KVB._varlen_bwd_dkdv_tuned, "dq": KVB._varlen_bwd_dq_tuned}


def _reachable(kernel):
    """Every tile the prune filters can keep for ``kernel``, over architecture families, head-dim
    widths (multiples of 16: the chunked widths), dtypes and dropout; warps, stages and compile
    hints change nothing in the interpreter, which runs a configuration as its tiling."""
    seen = {}
    for family, width, dtype, drop in itertools.product(_configs.ARCH_FAMILIES, range(16, 257, 16),
                                                        (torch.float16, torch.bfloat16, torch.float32), (False, True)):
        for c in _configs.attention_configs(kernel, width, dtype, drop, family=family):
            seen.setdefault((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]), c)
    return list(seen.values())


CONFIGS = [(kernel, c) for kernel in TUNED for c in _reachable(kernel)]


def test_every_candidate_tile_has_a_block_table_row():
    for kernel, configs in _configs.ATTENTION_CONFIGS.items():
        for c in configs:
            assert {c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]} <= set(KV.TABLE_BLOCKS), (kernel, c)


@pytest.mark.parametrize("kernel,config", CONFIGS,
                         ids=[f"{k}-{_autotune.config_label(c).replace(', ', '-')}" for k, c in CONFIGS])
def test_every_gpu_configuration(kernel, config, monkeypatch, device):
    """Each configuration the autotuner may pick, forced in the interpreter; the first of each
    kernel with dropout."""
    tile = triton.Config({k: config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N")}, num_warps=config.num_warps,
                         num_stages=config.num_stages)  # AMD's compile hints mean nothing to the interpreter
    monkeypatch.setattr(TUNED[kernel], "interpret_config", lambda args: tile)
    first = _autotune.config_key(config) == _autotune.config_key(_reachable(kernel)[0])
    lengths, H, D, p = (1, 40, 17, 70), 1, 24, (0.2 if first else 0.0)
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float32, device)
    keep = KD.attention_dropout_mask(1, H, sum(lengths), sum(lengths), p, 5, device=device)[0] if p else None
    _check_all(_launch(q, k, v, dout, cu, D ** -0.5, p=p, seed=5),
               _reference(q, k, v, dout, cu, D ** -0.5, keep=keep, p=p), torch.float32)


@skip_on_gpu
def test_simulated_gpu_tunes_each_kernel_and_runs_the_winner(monkeypatch, device):
    """The GPU's autotuned launch (simulated in the interpreter, tests/_simulated_gpu.py): each
    kernel times its pruned candidates with the varlen grid, and the winner's results are right."""
    lengths, H, D = (1, 20, 17), 1, 32
    cu = _cu(lengths, device)
    q, k, v, dout = _inputs(lengths, H, D, torch.float16, device)
    kept = {name: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in KV.varlen_configs(
        kernel, D, torch.float16, False)] for kernel, name in (("fwd", "_varlen_fwd"), ("dkdv", "_varlen_bwd_dkdv"),
                                                                 ("dq", "_varlen_bwd_dq"))}
    clear_tuning(*TUNED.values())
    try:
        with simulated_gpu(monkeypatch, lambda launched: float(launched[0].meta["BLOCK_M"])) as (_, timed):
            got = _launch(q, k, v, dout, cu, D ** -0.5)
        by_kernel = {}
        for launched in timed:
            by_kernel.setdefault(launched[0].kernel, []).append((launched[0].meta["BLOCK_M"],
                                                                  launched[0].meta["BLOCK_N"]))
        assert by_kernel == kept
    finally:
        clear_tuning(*TUNED.values())
    _check_all(got, _reference(q, k, v, dout, cu, D ** -0.5), torch.float16,
               _reference(q, k, v, dout, cu, D ** -0.5, dtype=torch.float16))


# ----------------------------------------------------------------------------------------------
# torch.library and torch.compile
# ----------------------------------------------------------------------------------------------


def test_opcheck_all_ops(device):
    lengths, H, D = (3, 6), 2, 16
    cu, T = _cu(lengths, device), sum(lengths)
    q, k, v, dout = _inputs(lengths, H, D, torch.float32, device)
    torch.library.opcheck(torch.ops.fastvit.varlen_block_table.default, (cu, T))
    table = torch.ops.fastvit.varlen_block_table(cu, T)
    p, seed = 0.2, torch.tensor(5)  # the optional seed given; the qkv ops below leave it out
    torch.library.opcheck(torch.ops.fastvit.varlen_attention_fwd.default, (q, k, v, cu, table, 6, p, 0.25, seed))
    out, lse = torch.ops.fastvit.varlen_attention_fwd(q, k, v, cu, table, 6, p, 0.25, seed)
    torch.library.opcheck(torch.ops.fastvit.varlen_attention_bwd.default,
                          (dout, q, k, v, out, lse, torch.randn_like(lse), cu, table, 6, p, 0.25, seed))
    qkv = torch.randn(T, 3 * H * D, device=device).half()
    torch.library.opcheck(torch.ops.fastvit.varlen_qkv_attention_fwd.default, (qkv, H, cu, table, 6, 0.0, 0.25, None))
    out, lse = torch.ops.fastvit.varlen_qkv_attention_fwd(qkv, H, cu, table, 6, 0.0, 0.25, None)
    torch.library.opcheck(torch.ops.fastvit.varlen_qkv_attention_bwd.default,
                          (torch.randn_like(out), qkv, out, lse, None, H, cu, table, 6, 0.0, 0.25, None))


def test_compile_dynamic_one_graph_for_any_mix(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    H, D = 2, 8

    def fn(qkv, cu, max_seqlen):
        return ops.varlen_qkv_attention(qkv, H, cu, max_seqlen, backend="triton")

    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for lengths in ((3, 17, 5), (40, 2, 9, 9, 1)):
        cu = _cu(lengths, device)
        qkv = torch.randn(sum(lengths), 3 * H * D, device=device, requires_grad=True)
        out = compiled(qkv, cu, max(lengths))
        out.backward(torch.ones_like(out))
        grad, qkv.grad = qkv.grad, None
        eager = fn(qkv, cu, max(lengths))
        eager.backward(torch.ones_like(eager))
        assert torch.equal(out, eager) and torch.equal(grad, qkv.grad), lengths
        frames.append(counter.frame_count)
    # Dynamo may restart its first analysis once (it re-traces the float dropout_p default), but
    # the second mix (other T, S and max_seqlen) must reuse the first graph: no new compile.
    assert frames[0] >= 1 and frames[1] == frames[0], f"compiles after each mix: {frames}"


# ----------------------------------------------------------------------------------------------
# Bad input: an error naming the argument, before any launch
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")

    for name in ("varlen_block_table", "varlen_attention_fwd", "launch"):
        monkeypatch.setattr(KV, name, forbidden)
    for name in ("varlen_attention_bwd", "launch"):
        monkeypatch.setattr(KVB, name, forbidden)


def _qkv3(T=10, H=2, D=8):
    return tuple(torch.randn(T, H, D) for _ in range(3))


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


@pytest.mark.parametrize("args,exc,match", [
    ((_qkv3(), _i32([1, 4, 10]), 6), ValueError, r"cu_seqlens must start at 0, got cu_seqlens\[0\] = 1"),
    ((_qkv3(), _i32([0, 6, 4, 10]), 6), ValueError, r"strictly increasing .* decreases at index 2"),
    ((_qkv3(), _i32([0, 4, 4, 10]), 6), ValueError, r"repeats a value \(an empty sequence\) at index 2"),
    ((_qkv3(), _i32([0, 4, 9]), 6), ValueError, r"must end at the number of tokens T = 10, got cu_seqlens\[-1\] = 9"),
    ((_qkv3(), torch.tensor([0, 4, 10]), 6), TypeError, "cu_seqlens must have dtype int32, got torch.int64"),
    ((_qkv3(), torch.tensor([0.0, 10.0]), 10), TypeError, "cu_seqlens must have dtype int32"),
    ((_qkv3(), _i32([0, 4, 10]).to("meta"), 6), ValueError, r"cu_seqlens must be on the device of q \(cpu\), got meta"),
    ((_qkv3(), _i32([10]), 10), ValueError, r"cu_seqlens must be 1-D of length S\+1 >= 2"),
    ((_qkv3(), _i32([[0, 10]]), 10), ValueError, r"cu_seqlens must be 1-D"),
    ((_qkv3(), [0, 10], 10), TypeError, "cu_seqlens must be a torch.Tensor"),
    ((_qkv3(), _i32([0, 4, 10]), 5), ValueError,
     r"max_seqlen must be at least the longest sequence \(6 tokens, sequence 1\), got 5"),
    ((_qkv3(), _i32([0, 4, 10]), 0), ValueError, "max_seqlen must be a positive int, got 0"),
    ((_qkv3(), _i32([0, 4, 10]), 6.0), ValueError, "max_seqlen must be a positive int"),
    (((torch.randn(10, 2, 8), torch.randn(10, 2, 8), torch.randn(9, 2, 8)), _i32([0, 10]), 10), ValueError,
     r"q, k and v must have the same shape \(T, H, D\), got q \(10, 2, 8\) and v \(9, 2, 8\)"),
    (((torch.randn(10, 2, 8), torch.randn(10, 3, 8), torch.randn(10, 3, 8)), _i32([0, 10]), 10), ValueError,
     "same shape"),
    (((torch.randn(10, 16), torch.randn(10, 16), torch.randn(10, 16)), _i32([0, 10]), 10), ValueError, "q must be 3-D"),
    (((torch.randn(10, 2, 8), torch.randn(10, 2, 8).half(), torch.randn(10, 2, 8)), _i32([0, 10]), 10), ValueError,
     "dtype"),
])
def test_bad_input_is_refused_before_launch(no_launch, args, exc, match):
    (q, k, v), cu, max_seqlen = args
    for backend in ("triton", "sdpa"):
        with pytest.raises(exc, match=match):
            ops.varlen_attention(q, k, v, cu, max_seqlen, backend=backend)


def test_bad_qkv_form_and_dropout_are_refused(no_launch):
    cu = _i32([0, 4, 10])
    with pytest.raises(ValueError, match=r"3 \* num_heads"):
        ops.varlen_qkv_attention(torch.randn(10, 25), 1, cu, 6, backend="triton")
    with pytest.raises(ValueError, match="num_heads"):
        ops.varlen_qkv_attention(torch.randn(10, 24), 0, cu, 6, backend="triton")
    with pytest.raises(ValueError, match="qkv must be 2-D"):
        ops.varlen_qkv_attention(torch.randn(1, 10, 24), 1, cu, 6, backend="triton")
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        ops.varlen_qkv_attention(torch.randn(10, 24), 1, _i32([2, 10]), 8, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' supports head_dim up to 256, got 300"):
        ops.varlen_attention(*(torch.randn(10, 1, 300) for _ in range(3)), _i32([0, 10]), 10, backend="triton")
    for p in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError, match="dropout_p"):
            ops.varlen_attention(*_qkv3(), cu, 6, dropout_p=p, backend="triton")
