"""The attention op layer on the Triton path (fastvit/ops/_attention_triton.py over
kernels/attention.py): lse as an output, cls_attention, custom ops (opcheck), torch.compile,
export, autocast, bad input, and the launch configuration. On the ``device`` fixture's device.
"""
from __future__ import annotations

import pytest
import torch

import fastvit.ops as ops
from fastvit import reference
from fastvit.kernels import attention as K
from fastvit.kernels import attention_bwd as KB
from tests._tolerances import assert_close_to_reference, rel_err
from tests.test_attention_kernel import _qkv

# ----------------------------------------------------------------------------------------------
# lse, cls_attention
# ----------------------------------------------------------------------------------------------


def test_lse_gradient_flows(device):
    """lse is an output like any other: a loss that uses it gets d lse / d scores = P."""
    q, k, v = _qkv(1, 2, 40, 50, 16, torch.float32, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.attention(*leaves, backend="triton", return_lse=True)
    w = torch.randn_like(lse)
    (out.sum() + (lse * w).sum()).backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    scores = (ref[0] @ ref[1].transpose(-2, -1)) / 4.0
    (torch.softmax(scores, -1) @ ref[2]).sum().add((torch.logsumexp(scores, -1) * w.double()).sum()).backward()
    for leaf, r in zip(leaves, ref):
        assert rel_err(leaf.grad, r.grad) <= 1e-5
    # Only lse used: out's gradient is absent, not a zero tensor someone has to allocate.
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    _, lse = ops.attention(*leaves, backend="triton", return_lse=True)
    lse.sum().backward()
    assert torch.isfinite(leaves[0].grad).all() and leaves[2].grad.abs().max() == 0


@pytest.mark.parametrize("N", [1, 197])
def test_cls_attention_rows(N, device):
    q, k, v = _qkv(2, 3, N, N, 32, torch.float32, device)
    _, lse = ops.attention(q, k, v, backend="triton", return_lse=True)
    probs = reference.attention_probs(q.double(), k.double())
    for row in (0, N - 1):
        got = ops.cls_attention(q, k, lse, row=row)
        assert got.shape == (2, 3, N)
        assert rel_err(got, probs[:, :, row]) <= 1e-5
        assert torch.allclose(got.double().sum(-1), torch.ones(2, 3, dtype=torch.float64, device=device), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# torch.library / compile / export / autocast
# ----------------------------------------------------------------------------------------------


def test_opcheck_all_ops(device):
    q, k, v = _qkv(1, 2, 9, 12, 16, torch.float32, device)
    seed = torch.tensor(5)
    for p, s in ((0.0, None), (0.2, seed)):
        torch.library.opcheck(torch.ops.fastvit.attention_fwd.default, (q, k, v, p, 0.25, s))
        out, lse = torch.ops.fastvit.attention_fwd(q, k, v, p, 0.25, s)
        for dlse in (None, torch.randn_like(lse)):
            torch.library.opcheck(torch.ops.fastvit.attention_bwd.default,
                                  (torch.randn_like(out), q, k, v, out, lse, dlse, p, 0.25, s))
    qkv = torch.randn(1, 9, 3 * 2 * 16, device=device).half()
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_fwd.default, (qkv, 2, 0.0, 0.25, None))
    out, lse = torch.ops.fastvit.qkv_attention_fwd(qkv, 2, 0.0, 0.25, None)
    torch.library.opcheck(torch.ops.fastvit.qkv_attention_bwd.default,
                          (torch.randn_like(out), qkv, out, lse, None, 2, 0.0, 0.25, None))


def _fastvit_ops(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "fastvit" in str(n.target)]


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_compile_fullgraph_sees_one_opaque_op(p, device):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    H = 2
    qkv = torch.randn(2, 20, 3 * H * 16, requires_grad=True, device=device)
    dout = torch.randn(2, 20, H * 16, device=device)

    def fn(x):
        return ops.qkv_attention(x, H, dropout_p=p, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    torch.manual_seed(3)
    out = compiled(qkv)
    out.backward(dout)
    grad = qkv.grad.clone()
    assert [_fastvit_ops(g) for g in graphs] == [["fastvit.qkv_attention_fwd.default"],
                                                 ["fastvit.qkv_attention_bwd.default"]]
    for g in graphs:
        assert not [n for n in g.graph.nodes if "mm" in str(n.target) or "softmax" in str(n.target)]
    qkv.grad = None
    torch.manual_seed(3)
    eager = fn(qkv)
    eager.backward(dout)
    assert torch.equal(out, eager) and torch.equal(grad, qkv.grad)
    # The stock backend the issue names, too.
    torch._dynamo.reset()
    torch.manual_seed(3)
    assert torch.equal(torch.compile(fn, fullgraph=True, backend="aot_eager")(qkv), eager)


def test_double_backward_raises_instead_of_a_silent_zero(device):
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 8, 8, 16, torch.float32, device))
    dout = torch.randn(1, 1, 8, 16, requires_grad=True, device=device)
    (gq,) = torch.autograd.grad(ops.attention(q, k, v, backend="triton"), q, dout, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gq.sum().backward()


def test_export_sees_one_opaque_op(device):
    class Block(torch.nn.Module):
        def forward(self, q, k, v):
            return ops.attention(q, k, v, backend="triton")

    q, k, v = _qkv(1, 2, 17, 17, 16, torch.float32, device)
    ep = torch.export.export(Block(), (q, k, v))
    assert _fastvit_ops(ep.graph_module) == ["fastvit.attention_fwd.default"]
    assert torch.equal(ep.module()(q, k, v), ops.attention(q, k, v, backend="triton"))


def test_autocast_runs_in_the_autocast_dtype_like_sdpa(device):
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 33, 33, 16, torch.float32, device))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.attention(q, k, v, backend="triton")
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.dtype == sdpa.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    ref = reference.attention(q.double(), k.double(), v.double())
    low = reference.attention(*(t.detach().bfloat16() for t in (q, k, v)))
    assert_close_to_reference(out, ref, dtype=torch.bfloat16, lowp_baseline=low)
    qkv = torch.randn(1, 33, 3 * 2 * 16, requires_grad=True, device=device)
    with torch.autocast("cpu", dtype=torch.float16):
        out = ops.qkv_attention(qkv, 2, backend="triton")
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert qkv.grad.dtype == torch.float32 and torch.isfinite(qkv.grad).all()


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors before any launch
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel was launched for bad input")

    for module in (K, KB):
        monkeypatch.setattr(module, "launch", forbidden)
    monkeypatch.setattr(K, "attention_fwd", forbidden)
    monkeypatch.setattr(K, "attention_bwd", forbidden)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16).half(), torch.randn(1, 2, 8, 16)), ValueError, "dtype"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)), ValueError, "batch"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)), ValueError, "heads"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)), ValueError, "head_dim"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 9, 16)), ValueError, "same shape"),
    (lambda: (torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16, device="meta")),
     ValueError, "device"),
    (lambda: tuple(torch.randn(1, 1, 4, 257) for _ in range(3)), ValueError, "head_dim up to 256"),
    (lambda: tuple(torch.ones(1, 1, 4, 8, dtype=torch.int32) for _ in range(3)), TypeError, "floating dtype"),
    (lambda: tuple(torch.randn(1, 4, 8) for _ in range(3)), ValueError, "4-D"),
])
def test_bad_input_is_refused_before_launch(no_launch, make, exc, match, device):
    with pytest.raises(exc, match=match):
        ops.attention(*make(), backend="triton")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True])
def test_bad_dropout_is_refused(no_launch, p, device):
    q, k, v = _qkv(1, 1, 4, 4, 8, torch.float32, device)
    with pytest.raises(ValueError, match="dropout_p"):
        ops.attention(q, k, v, dropout_p=p, backend="triton")
    with pytest.raises(ValueError, match="dropout_p"):
        ops.qkv_attention(torch.randn(1, 4, 24, device=device), 1, dropout_p=p, backend="triton")


def test_bad_qkv_shapes_are_refused(no_launch, device):
    with pytest.raises(ValueError, match="3 \\* num_heads"):
        ops.qkv_attention(torch.randn(1, 4, 25, device=device), 1, backend="triton")
    with pytest.raises(ValueError, match="num_heads"):
        ops.qkv_attention(torch.randn(1, 4, 24, device=device), 0, backend="triton")
    with pytest.raises(ValueError, match="head_dim up to 256"):
        ops.qkv_attention(torch.randn(1, 4, 3 * 2 * 300, device=device), 2, backend="triton")


def test_float64_runs_pytorch_without_a_launch(no_launch, device):
    """float64 is served by the PyTorch path on every backend (fastvit.backend): exact, no kernel."""
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, device=device) for _ in range(3))
    assert rel_err(ops.attention(q, k, v, backend="triton"), reference.attention(q, k, v)) <= 1e-12
    qkv = torch.randn(1, 9, 3 * 2 * 8, dtype=torch.float64, device=device)
    q, k, v = qkv.view(1, 9, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    expected = reference.attention(q, k, v).transpose(1, 2).reshape(1, 9, 16)
    assert rel_err(ops.qkv_attention(qkv, 2, backend="triton"), expected) <= 1e-12


def test_cpu_tensors_without_the_interpreter_are_refused(no_launch, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 1, 4, 4, 8, torch.float32, "cpu")  # CPU inputs on purpose
    with pytest.raises(RuntimeError, match="the kernels need a CUDA/ROCm GPU"):
        ops.attention(q, k, v, backend="triton")
    with pytest.raises(RuntimeError, match="the kernels need a CUDA/ROCm GPU"):
        ops.qkv_attention(torch.randn(1, 4, 24), 1, backend="triton")
    # auto falls back to sdpa there instead of failing.
    assert torch.allclose(ops.attention(q, k, v), reference.attention(q, k, v), atol=1e-6)


def test_launcher_validates_outputs_and_seed(device):
    q, k, v = _qkv(1, 2, 8, 8, 16, torch.float32, device)
    with pytest.raises(ValueError, match="out must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 8, 8, device=device))
    with pytest.raises(ValueError, match="out must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 8, 16, device=device).half())
    with pytest.raises(ValueError, match="unit last stride"):
        K.attention_fwd(q, k, v, sm_scale=0.1, out=torch.empty(1, 2, 16, 8, device=device).transpose(-1, -2))
    with pytest.raises(ValueError, match="lse must be"):
        K.attention_fwd(q, k, v, sm_scale=0.1, lse=torch.empty(1, 2, 8, device=device).half())
    with pytest.raises(ValueError, match="seed"):
        K.attention_fwd(q, k, v, sm_scale=0.1, dropout_p=0.1, seed=-1)
    with pytest.raises(ValueError, match="dropout_p"):
        K.attention_dropout_mask(1, 1, 4, 4, 1.0, seed=1, device=device)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        K.attention_fwd(q.double(), k.double(), v.double(), sm_scale=0.1)
    with pytest.raises(ValueError, match="head_dim"):
        K.attention_fwd(*(torch.randn(1, 1, 4, 300, device=device) for _ in range(3)), sm_scale=0.1)
    out, lse = K.attention_fwd(q, k, v, sm_scale=0.1)
    with pytest.raises(ValueError, match="dout must be"):
        K.attention_bwd(torch.randn(1, 2, 8, 8, device=device), q, k, v, out, lse, sm_scale=0.1)
    with pytest.raises(ValueError, match="dq must be"):
        K.attention_bwd(torch.randn_like(out), q, k, v, out, lse, sm_scale=0.1, dq=torch.empty(1, 2, 8, 8, device=device))


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("allow_tf32,expected", [(False, "ieee"), (True, "tf32")])
def test_fp32_dot_precision_follows_allow_tf32(monkeypatch, allow_tf32, expected, device):
    seen = []
    monkeypatch.setattr(K, "launch", lambda kernel, rows, bh, args, **kw: seen.append(args["INPUT_PRECISION"]))
    q, k, v = _qkv(1, 1, 4, 4, 16, torch.float32, device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        K.attention_fwd(q, k, v, sm_scale=0.1)
        K.attention_fwd(q.half(), k.half(), v.half(), sm_scale=0.1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [expected, "ieee"]


def test_gpu_autotuner_keys_and_pruning(monkeypatch, device):
    """What a GPU launch would tune over: bucketed keys and the pruned list of kernels/_configs.py."""
    from fastvit.kernels import _configs

    tuner = K._attn_fwd_tuned.tuner
    assert tuner.early_config_prune is _configs.prune_attention_fwd_configs
    assert list(tuner.keys) == ["N_Q_KEY", "N_K_KEY", "HEAD_DIM", "DROPOUT", "INPUT_PRECISION", "ROPE"]
    named = {"Q": torch.empty(0, dtype=torch.float16, device=device)}
    for block_d, dropout in ((64, False), (128, False), (128, True), (256, False)):
        kept = tuner.early_config_prune(tuner.configs, named, BLOCK_D=block_d, DROPOUT=dropout)
        assert 1 <= len(kept) <= _configs.ATTENTION_MAX_CONFIGS
        for c in kept:
            assert _configs.attention_config_fits("fwd", c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                  c.num_stages, block_d, 2, dropout)
    # Lengths share a compiled, tuned kernel per power-of-two bucket (197 and 256 do; 257 does not).
    args = {}
    monkeypatch.setattr(K, "launch", lambda kernel, rows, bh, a, **kw: args.update(a))
    q = torch.randn(1, 1, 197, 16, device=device)
    K.attention_fwd(q, q, q, sm_scale=0.1)
    assert (args["N_Q_KEY"], args["N_K_KEY"], args["BLOCK_D"]) == (256, 256, 16)
