"""FastViT on the fused kernels end to end: launches, training parity, autocast, compile, checkpointing."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastvit import FastViT
from fastvit.profiling.launches import block_launches
from tests._tolerances import rel_err

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


def small_model(backend, **kw):
    return FastViT(**{**SMALL, **kw}, backend=backend)


def test_triton_block_launches_at_most_seven_kernels():
    c = block_launches("triton", "vit_tiny_patch16_224")
    # add+LN, qkv GEMM, attention, proj GEMM, add+LN, fc1+bias+GELU, fc2 GEMM
    assert c.total == 7, c.to_dict()
    assert sum(c.triton.values()) == 4, c.to_dict()
    assert c.torch == {"addmm": 3}, c.to_dict()


def test_eager_block_launch_count():
    # eager: norm, qkv, q/k/v copies for bmm, QK^T, scale, softmax, PV, proj, add, norm, fc1, GELU, fc2, add
    c = block_launches("eager", "vit_tiny_patch16_224")
    assert c.total == 17, c.to_dict()
    assert not c.triton


def _train(model, steps=20, seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, batch, 3, 32, 32, generator=g)
    ys = torch.randint(0, 10, (steps, batch), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    losses = []
    model.train()
    torch.manual_seed(seed)
    for x, y in zip(xs, ys):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_parity_with_eager():
    eager = small_model("eager")
    fused = copy.deepcopy(eager).set_backend("triton")
    l_eager, l_fused = _train(eager), _train(fused)
    for step, (a, b) in enumerate(zip(l_fused, l_eager)):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: triton loss {a} vs eager {b}"
    dim = SMALL["embed_dim"]
    for (name, p), q in zip(fused.named_parameters(), eager.parameters()):
        if name.endswith("attn.qkv.bias"):
            # The key bias adds the same q.b_k to every logit of a row, which softmax cancels: its true
            # gradient is 0, and AdamW turns the ~1e-9 rounding noise of either backend into lr-sized
            # steps in random directions. Compare the query and value biases only.
            p, q = torch.cat([p[:dim], p[2 * dim:]]), torch.cat([q[:dim], q[2 * dim:]])
        assert rel_err(p, q) <= 1e-4, name


def test_training_with_dropout_and_drop_path_still_learns():
    model = small_model("triton", drop_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1, drop_path_rate=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_autocast_bf16_matches_eager_under_the_same_autocast():
    eager = small_model("eager").eval()
    fused = copy.deepcopy(eager).set_backend("triton")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref64 = copy.deepcopy(eager).double()(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_eager = eager(x)
            y_fused = fused(x)
    assert torch.isfinite(y_fused).all()
    err_eager, err_fused = rel_err(y_eager, ref64), rel_err(y_fused, ref64)
    assert err_fused <= max(2 * err_eager, 2e-2), (err_fused, err_eager)


def test_grad_checkpointing_gives_the_same_gradients_on_triton():
    model = small_model("triton")
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) <= 1e-6, n


@pytest.mark.parametrize("backend, compiler", [("triton", "aot_eager"), ("eager", "inductor"), ("sdpa", "inductor")])
def test_torch_compile_fullgraph(backend, compiler):
    torch._dynamo.reset()
    model = small_model(backend, depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    with torch.no_grad():
        expected = model(x)
        actual = compiled(x)
    assert rel_err(actual, expected) <= 1e-5


def test_torch_export_sees_the_fused_ops():
    model = small_model("triton", depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"fastvit.qkv_attention_fwd.default", "fastvit.linear_gelu_fwd.default"} <= targets, targets
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(exported.module()(x2), model(x2)) <= 1e-5
