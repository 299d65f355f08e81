"""timm's Eva models (EVA-02, DINOv3, timm's rope ViT) on FastViT: converted with ``from_timm``
and held to timm's own outputs and input gradients (fp32, relative error <= 1e-5) on every
backend, at the size they are built at and at a non-square one (rotary tables recomputed for the
new grid); registered names with timm's parameter counts and keys; refusals by name; launches.

timm models at full width (real head dims 64), depth 2, small images, every parameter random
(timm zero- or one-initialises biases and layer scales, which would hide a missing term)."""
import pytest
import torch

import fastvit
from fastvit.convert import UnsupportedModelError
from fastvit.profiling.launches import count_launches
from tests._tolerances import rel_err
from tests.test_timm_families import _outputs_and_grad

timm = pytest.importorskip("timm")

# name: (image size built at, patch grid of the second size)
EVA = {
    "eva02_tiny_patch14_224": (28, (3, 2)),        # SwiGLU packed, interleaved rope, q/v bias, avg + fc_norm
    "eva02_small_patch14_336": (28, (2, 3)),
    "eva02_base_patch14_224": (28, (2, 3)),        # separate q/k/v, SwiGLU split with a norm inside
    "vit_small_patch16_dinov3": (32, (3, 2)),      # rotate-half rope, no pos_embed, 4 registers, layer scale
    "vit_base_patch16_dinov3": (32, (2, 3)),
    "vit_small_plus_patch16_dinov3": (32, (3, 2)),  # + SwiGLU split
    "vit_base_patch16_rope_reg1_gap_256": (32, (2, 3)),  # no CLS, 1 register, GELU MLP, layer scale
}


def eva_model(name, img_size, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, depth=2, img_size=img_size, dynamic_img_size=True, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    return m.eval()


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("name", sorted(EVA))
def test_eva_equals_timm(name, backend):
    size, grid = EVA[name]
    src = eva_model(name, size)
    ours = fastvit.from_timm(src, backend=backend)
    assert set(ours.state_dict()) == set(src.state_dict())
    patch = ours.patch_size[0]
    for hw in [(size, size), (grid[0] * patch, grid[1] * patch)]:
        x = torch.randn(1, 3, *hw)  # one image: the interpreter's time goes with the tokens
        for what, a, b in zip(("forward_features", "pre_logits", "logits", "input gradient"),
                              _outputs_and_grad(ours, x), _outputs_and_grad(src, x)):
            assert rel_err(a, b) <= 1e-5, (hw, what)


@pytest.mark.parametrize("name", sorted(set(EVA) | {"eva02_large_patch14_224", "vit_large_patch16_dinov3"}))
def test_registered_eva_names_have_timms_parameters_and_keys(name):
    with torch.device("meta"):
        src = timm.create_model(name, pretrained=False)
        ours = fastvit.create_model(name)
    n = sum(p.numel() for p in src.parameters())
    assert fastvit.count_params(**fastvit.model_config(name).kwargs()) == n == sum(p.numel() for p in ours.parameters())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in src.state_dict().items()}


def test_load_state_dict_strict_from_timm_and_training_grads():
    """The state dict of timm's Eva loads strictly into create_model's FastViT; in training mode
    (dropout rates 0) every parameter gradient matches timm's. sdpa: the q/k/v concatenation and
    the folded adds are the same code on every backend; the kernels' gradients are tested above
    and in tests/test_swiglu_ops.py."""
    src = eva_model("eva02_base_patch14_224", 28)
    ours = fastvit.create_model("eva02_base_patch14_224", depth=2, img_size=28, backend="sdpa")
    ours.load_state_dict(src.state_dict(), strict=True)
    src.train(), ours.train()
    x = torch.randn(2, 3, 28, 42)
    for m in (src, ours):
        m.forward_head(m.forward_features(x), pre_logits=True).pow(2).mean().backward()
    theirs = dict(src.named_parameters())
    for k, p in ours.named_parameters():
        if theirs[k].grad is None:  # the head: not on the path to the pooled features
            assert p.grad is None, k
        else:
            assert rel_err(p.grad, theirs[k].grad) <= 1e-5, k


REFUSED = [
    (dict(use_post_norm=True), "post_norm"),
    (dict(attn_type="rope"), "attn_type='rope'"),
    (dict(rope_type="mixed"), "rope_type 'mixed'"),
    (dict(qk_norm=True), "qk_norm"),
    (dict(scale_attn_inner=True), "scale_attn_inner"),
    (dict(use_rot_pos_emb=False), "EVA-01"),
    (dict(attn_only_layer_scale=True, init_values=1e-5), "attn_only_layer_scale"),
    (dict(patch_drop_rate=0.1), "patch dropout"),
    (dict(global_pool="max"), "global_pool='max'"),
    (dict(rope_grid_indexing="xy"), "rope_grid_indexing='xy'"),
]


@pytest.mark.parametrize("kw,feature", REFUSED, ids=[f for _, f in REFUSED])
def test_unsupported_eva_features_are_refused_by_name(kw, feature):
    src = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28, **kw)
    with pytest.raises(UnsupportedModelError, match=feature.replace("(", r"\(").replace(")", r"\)")):
        fastvit.from_timm(src)


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="mlp_layer must be one of 'mlp', 'swiglu', 'swiglu_packed', got 'glu'"):
        fastvit.FastViT(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, mlp_layer="glu")
    with pytest.raises(ValueError, match="rope must be one of 'eva02', 'dinov3'"):
        fastvit.FastViT(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, rope="rope2d")
    with pytest.raises(ValueError, match="rope needs head_dim .* divisible by 4, got 6"):
        fastvit.FastViT(img_size=28, patch_size=14, embed_dim=12, depth=1, num_heads=2, rope="eva02")
    with pytest.raises(ValueError, match="pos_embed must be 'learn' or 'none', got 'sincos'"):
        fastvit.FastViT(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, pos_embed="sincos")


# Launches of one inference block on triton (x and the pending MLP branch given), as for a ViT
# block: the two LayerNorm adds, attention (rotating q and k as it loads them), the MLP's fused
# GEMM + activation on Triton; the qkv, proj and fc2 GEMMs on PyTorch. EVA's packed q/v bias is
# made on the first call and kept while the parameters do not change.
BLOCK_LAUNCHES = {"eva02_tiny_patch14_224": "_linear_glu_fwd", "vit_small_patch16_dinov3": "_linear_gelu_fwd",
                  "vit_base_patch16_rope_reg1_gap_256": "_linear_gelu_fwd"}


@pytest.mark.parametrize("name", sorted(BLOCK_LAUNCHES))
def test_block_launches_on_triton(name):
    model = fastvit.create_model(name, depth=2, img_size=28 if "eva02" in name else 32, backend="triton").eval()
    x = torch.randn(1, 3, *model.img_size)
    with torch.no_grad():
        h, pending = model.blocks[0](model._embed(x), None, None, model._rope_tables(x))
        model.blocks[1](h, pending, None, model._rope_tables(x))
        with count_launches() as c:
            model.blocks[1](h, pending, None, model._rope_tables(x))
    assert dict(c.triton) == {"_layer_norm_fwd": 2, "_attn_fwd": 1, BLOCK_LAUNCHES[name]: 1}, c.to_dict()
    assert sum(c.torch.values()) == 3 and set(c.torch) <= {"mm", "addmm"}, c.to_dict()
    assert c.total == 7, c.to_dict()


def test_packed_qv_bias_follows_the_parameters():
    """The kept (q_bias, 0, v_bias) vector is rebuilt when a bias changes in place (an optimizer
    step) and is never used while autograd records (the bias gets its gradient)."""
    model = fastvit.create_model("eva02_tiny_patch14_224", depth=1, img_size=28, backend="eager").eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, model.embed_dim)
    with torch.no_grad():
        first = attn._qkv(x)
        attn.q_bias.add_(1.0)
        second = attn._qkv(x)
    assert torch.allclose(second - first, torch.cat([torch.ones(model.embed_dim), torch.zeros(2 * model.embed_dim)])
                          .expand_as(first), atol=1e-5)
    attn._qkv(x).sum().backward()
    assert attn.q_bias.grad is not None and torch.equal(attn.q_bias.grad, torch.full_like(attn.q_bias, 5.0))
