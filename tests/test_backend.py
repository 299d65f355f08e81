"""The backend is chosen once: stored by every module at construction, resolved by one function."""
import inspect

import pytest
import torch
import torch.nn as nn

import fastvit
from fastvit import layers, ops
from fastvit.backend import explain, resolve_backend
from fastvit.layers import Attention, Block, LayerNorm, Mlp

MODULES = (Block, Attention, Mlp, LayerNorm, fastvit.FastViT)


def test_no_forward_takes_a_backend():
    for cls in MODULES + (layers.PatchEmbed, layers.DropPath):
        assert "backend" not in inspect.signature(cls.forward).parameters, cls.__name__
        if cls in MODULES:
            assert "backend" in inspect.signature(cls.__init__).parameters, cls.__name__


def _record_backends(monkeypatch):
    """Every call into the ops layer, with the backend it resolved to."""
    seen = []
    for name in ("qkv_attention", "layer_norm", "add_layer_norm", "linear_gelu", "mlp"):
        fn = getattr(ops, name)

        def wrapped(*args, _fn=fn, _name=name, **kw):
            first = args[0]
            seen.append((_name, resolve_backend(kw.get("backend", "auto"), first.device, first.dtype)))
            return _fn(*args, **kw)
        monkeypatch.setattr(ops, name, wrapped)
    return seen


@pytest.mark.parametrize("backend", ["triton", "sdpa", "eager"])
def test_block_runs_every_op_on_its_backend(monkeypatch, backend):
    seen = _record_backends(monkeypatch)
    blk = Block(64, 2, backend=backend)
    x, branch = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    h, pending = blk(x, layers.Pending(branch))
    assert {name for name, _ in seen} == {"qkv_attention", "add_layer_norm", "mlp"}
    assert {b for _, b in seen} == {backend}
    # the folded form computes the block of the papers: out = y + mlp(norm2(y)), y = x' + attn(norm1(x'))
    ref = Block(64, 2, backend="eager")
    ref.load_state_dict(blk.state_dict())
    xin = x + branch
    y = xin + ref.attn(nn.functional.layer_norm(xin, (64,), ref.norm1.weight, ref.norm1.bias, 1e-6))
    out = y + ref.mlp(nn.functional.layer_norm(y, (64,), ref.norm2.weight, ref.norm2.bias, 1e-6))
    torch.testing.assert_close(pending.add_to(h), out, rtol=1e-5, atol=1e-5)


def test_auto_block_on_the_interpreter_is_all_triton(monkeypatch):
    seen = _record_backends(monkeypatch)
    Block(32, 2)(torch.randn(1, 3, 32))  # "auto", and tests run under TRITON_INTERPRET=1
    assert seen and {b for _, b in seen} == {"triton"}


def test_set_backend_reaches_every_submodule():
    model = fastvit.FastViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                            backend="eager")
    holders = [m for m in model.modules() if hasattr(m, "backend")]
    assert len(holders) == 1 + 2 * 5 + 1  # model; block, norm1, attn, norm2, mlp; final norm
    assert model.set_backend("triton") is model
    assert {m.backend for m in holders} == {"triton"}
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("cuda")


def test_one_forward_path_for_every_backend():
    """eager, sdpa and triton run the same Python: the same ops are called in the same order."""
    model = fastvit.FastViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    traces, outs = {}, {}
    for b in ("eager", "sdpa", "triton"):
        model.set_backend(b)
        with pytest.MonkeyPatch.context() as mp:
            seen = _record_backends(mp)
            outs[b] = model(x)
        traces[b] = [name for name, _ in seen]
        assert {r for _, r in seen} == {b}
    assert traces["eager"] == traces["sdpa"] == traces["triton"]
    torch.testing.assert_close(outs["triton"], outs["eager"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-5, atol=1e-5)


def test_float64_runs_pytorch_on_every_backend():
    assert resolve_backend("triton", "cpu", torch.float64) == "sdpa"
    assert resolve_backend("auto", "cpu", torch.float64) == "sdpa"
    assert resolve_backend("triton", "cpu", torch.float32) == "triton"
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    out = ops.attention(q, q, q, backend="triton")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, fastvit.reference.attention(q, q, q))


def test_explain_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "cpu" in explain("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert "7.5" in explain("cuda:0") and resolve_backend("auto", "cuda:0") == "sdpa"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (10, 0))
    assert explain("cuda:0") is None and resolve_backend("auto", "cuda:0") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert explain("cpu") is None


def test_ops_limits_agree_with_the_kernels():
    """The ops layer validates against its own constants (importable without triton); they must
    be the kernels' own limits."""
    from fastvit.kernels import _configs, _gelu
    from fastvit.ops import _checks
    assert _checks.GELU_APPROXIMATIONS == _gelu.GELU_APPROXIMATIONS
    assert _checks.MAX_LAYER_NORM_WIDTH == _configs.LAYER_NORM_MAX_WIDTH
