"""The rope ops on the triton backend, as ops: the rotation happens inside the attention kernels
(no rotated copy of q and k in memory, no launch added), the custom ops carry the tables
(opcheck, torch.compile, export), and the gradients equal the separate-rotation path's.

Numerics of the kernels against float64 are in tests/test_rope_attention_kernel.py and
tests/test_rope_ops.py (every backend); here the op layer around them.
"""
from __future__ import annotations

import pytest
import torch

import fastvit.ops as ops
from fastvit.profiling.launches import count_launches
from fastvit.profiling.tracker import measure_peak
from fastvit.rope import RopeConfig, rope_tables
from tests._tolerances import assert_close_to_reference


def _case(device, pairing="interleaved", prefix=1, grid=(5, 7), heads=2, d=32, batch=2, dtype=torch.float32):
    kind = "eva" if pairing == "interleaved" else "dinov3"
    cos, sin = rope_tables(RopeConfig(kind, pairing=pairing), grid, d, device)
    n = prefix + grid[0] * grid[1]
    qkv = torch.randn(batch, n, 3 * heads * d, device=device, dtype=dtype)
    return qkv, heads, cos, sin, prefix, pairing


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_triton_rope_launches_only_the_attention_kernels(pairing, device):
    qkv, heads, cos, sin, prefix, _ = _case(device, pairing)
    qkv.requires_grad_(True)
    with count_launches() as fwd:
        out = ops.rope_qkv_attention(qkv, heads, cos, sin, num_prefix_tokens=prefix, pairing=pairing,
                                     backend="triton")
    assert dict(fwd.triton) == {"_attn_fwd": 1} and not fwd.torch, fwd.to_dict()
    dout = torch.randn_like(out)
    with count_launches() as bwd:
        out.backward(dout)
    assert dict(bwd.triton) == {"_attn_bwd_preprocess": 1, "_attn_bwd_dkdv": 1, "_attn_bwd_dq": 1}, bwd.to_dict()


def test_triton_rope_allocates_what_plain_attention_does(device):
    """Forward and backward peaks equal plain qkv attention's: no rotated q, k (or dq, dk) copies."""
    qkv, heads, cos, sin, prefix, pairing = _case(device, batch=1, grid=(6, 6))
    dout = torch.randn(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3, device=device)

    def run(rope):
        x = qkv.detach().requires_grad_(True)
        if rope:
            out = ops.rope_qkv_attention(x, heads, cos, sin, num_prefix_tokens=prefix, pairing=pairing,
                                         backend="triton")
        else:
            out = ops.qkv_attention(x, heads, backend="triton")
        out.backward(dout)

    run(True)  # the launcher's compacted copy of interleaved tables is made once per table
    plain = measure_peak(run, False, baseline=(qkv, dout, cos, sin)).peak_bytes
    fused = measure_peak(run, True, baseline=(qkv, dout, cos, sin)).peak_bytes
    assert fused == plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_fused_gradients_match_separate_rotation(pairing, dtype, device):
    """The fused path against rope_qkv (the rotation in PyTorch) + plain triton attention: the
    same function; fp32 to rounding, bf16 within the separate path's own distance to float64."""
    qkv, heads, cos, sin, prefix, _ = _case(device, pairing, prefix=5, grid=(4, 6), d=48, dtype=dtype)
    dout = torch.randn(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3, device=device, dtype=dtype)
    rot = dict(num_prefix_tokens=prefix, pairing=pairing)

    def grads(fn, x):
        x = x.detach().requires_grad_(True)
        out = fn(x)
        out.backward(dout.to(out.dtype))
        return out.detach(), x.grad

    fused = grads(lambda x: ops.rope_qkv_attention(x, heads, cos, sin, backend="triton", **rot), qkv)
    separate = grads(lambda x: ops.qkv_attention(ops.rope_qkv(x, heads, cos, sin, **rot), heads, backend="triton"),
                     qkv)
    ref = grads(lambda x: ops.qkv_attention(ops.rope_qkv(x, heads, cos.double(), sin.double(), **rot), heads,
                                            backend="eager"), qkv.double())
    for got, other, want, what in zip(fused, separate, ref, ("output", "dqkv")):
        assert_close_to_reference(got, want, dtype=dtype, lowp_baseline=other, what=what)


def test_opcheck_with_tables(device):
    qkv, heads, cos, sin, prefix, pairing = _case(device, batch=1, grid=(3, 4), d=16)
    rope = (cos, sin, prefix, pairing)
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_fwd.default, (qkv, heads, 0.0, 0.25, None, *rope))
    out, lse = torch.ops.fastvit.qkv_attention_fwd(qkv, heads, 0.0, 0.25, None, *rope)
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_bwd.default,
                          (torch.randn_like(out), qkv, out, lse, None, heads, 0.0, 0.25, None, *rope))
    B, N, _ = qkv.shape
    q, k, v = (t.contiguous() for t in qkv.view(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0))
    torch.library.opcheck(torch.ops.fastvit.attention_fwd.default, (q, k, v, 0.0, 0.25, None, *rope))
    out, lse = torch.ops.fastvit.attention_fwd(q, k, v, 0.0, 0.25, None, *rope)
    torch.library.opcheck(torch.ops.fastvit.attention_bwd.default,
                          (torch.randn_like(out), q, k, v, out, lse, None, 0.0, 0.25, None, *rope))


def test_compile_fullgraph_and_export(device):
    qkv, heads, cos, sin, prefix, pairing = _case(device, batch=1, grid=(3, 5), d=16)
    rot = dict(num_prefix_tokens=prefix, pairing=pairing)

    def fn(x):
        return ops.rope_qkv_attention(x, heads, cos, sin, backend="triton", **rot)

    x = qkv.detach().requires_grad_(True)
    eager = fn(x)
    eager.sum().backward()
    x2 = qkv.detach().requires_grad_(True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x2)
    compiled.sum().backward()
    assert torch.equal(compiled, eager) and torch.equal(x2.grad, x.grad)

    class Attn(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    ep = torch.export.export(Attn(), (qkv,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "fastvit.qkv_attention_fwd.default" in targets
    assert torch.equal(ep.module()(qkv), eager.detach())
