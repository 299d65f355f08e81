"""timm's ViT families on FastViT: DeiT (distilled), DeiT-III, DINOv2 (+registers), CLIP (QuickGELU),
SigLIP (MAP head), the average-pooled variants and qk_norm; converted with ``from_timm`` and held
to timm's own outputs and input gradients (fp32, relative error <= 1e-5) on every backend.

Models are timm's registered configurations at full width (real head dims: 64, 72) with depth 2
and a small image (native: the size they are built at; then a non-square one), random weights
everywhere (timm zero-initialises some, which would hide a missing term)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastvit
from fastvit.layers import Pending
from fastvit.profiling.launches import count_launches
from tests._tolerances import rel_err

timm = pytest.importorskip("timm")

# name: (image size built at, patch grid of the second size)
FAMILIES = {
    "deit_tiny_distilled_patch16_224": (32, (2, 3)),
    "deit3_small_patch16_224": (32, (3, 2)),
    "vit_small_patch14_dinov2": (28, (2, 3)),
    "vit_base_patch14_reg4_dinov2": (28, (3, 2)),
    "vit_base_patch16_clip_224": (32, (2, 3)),
    "vit_base_patch16_clip_quickgelu_224": (32, (3, 2)),
    "vit_base_patch16_siglip_224": (32, (2, 3)),
    "vit_so400m_patch14_siglip_224": (28, (2, 3)),
    "vit_base_patch16_siglip_gap_224": (32, (3, 2)),
    "vit_medium_patch16_gap_256": (32, (2, 3)),
}


def timm_model(name, img_size, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, depth=2, img_size=img_size, dynamic_img_size=True, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    return m.eval()


def _outputs_and_grad(model, x):
    """forward_features, forward_head(pre_logits=True), the logits, and the input gradient of a
    fixed random-looking combination of the last two (one backward)."""
    x = x.clone().requires_grad_(True)
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    out = model.forward_head(feats)
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in (pooled, out))
    (g,) = torch.autograd.grad(loss, x)
    return feats.detach(), pooled.detach(), out.detach(), g


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_equals_timm(name, backend):
    size, grid = FAMILIES[name]
    src = timm_model(name, size)
    ours = fastvit.from_timm(src, backend=backend)
    patch = ours.patch_size[0]
    for hw in [(size, size), (grid[0] * patch, grid[1] * patch)]:
        x = torch.randn(2, 3, *hw)
        for what, a, b in zip(("forward_features", "pre_logits", "logits", "input gradient"),
                              _outputs_and_grad(ours, x), _outputs_and_grad(src, x)):
            assert rel_err(a, b) <= 1e-5, (hw, what)


def test_qk_norm_vit_equals_timm():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    src = VisionTransformer(img_size=32, patch_size=8, embed_dim=160, depth=2, num_heads=2, qk_norm=True,
                            num_classes=7, dynamic_img_size=True).eval()  # head_dim 80
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    for backend in ("sdpa", "triton"):
        ours = fastvit.from_timm(src, backend=backend)
        assert "blocks.0.attn.q_norm.weight" in ours.state_dict()
        x = torch.randn(2, 3, 24, 40)
        for a, b in zip(_outputs_and_grad(ours, x), _outputs_and_grad(src, x)):
            assert rel_err(a, b) <= 1e-5, backend


@pytest.mark.parametrize("name", sorted(set(FAMILIES) | {"deit3_base_patch16_384", "vit_large_patch14_dinov2",
                                                         "vit_large_patch14_clip_224"}))
def test_registered_names_have_timms_parameters_and_keys(name):
    with torch.device("meta"):
        src = timm.create_model(name, pretrained=False)
        ours = fastvit.create_model(name)
    assert fastvit.count_params(**fastvit.model_config(name).kwargs()) == sum(p.numel() for p in src.parameters())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in src.state_dict().items()}


def test_conversion_keeps_mode_dtype_and_distilled_training():
    src = timm_model("deit_tiny_distilled_patch16_224", 32).train().to(torch.float64)
    src.set_distilled_training(True)
    ours = fastvit.from_timm(src, backend="sdpa")
    assert ours.training and ours.pos_embed.dtype == torch.float64 and ours.distilled_training
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    cls, dist = ours(x)  # both heads in distilled training, as timm
    cls2, dist2 = src(x)
    assert rel_err(cls, cls2) <= 1e-12 and rel_err(dist, dist2) <= 1e-12
    ours.eval()
    src.eval()
    assert rel_err(ours(x), src(x)) <= 1e-12  # the mean of both heads


def test_layer_scale_rides_in_the_folded_add_seven_launches():
    model = fastvit.create_model("vit_small_patch14_dinov2", depth=2, img_size=28, backend="triton").eval()
    blk = model.blocks[1]
    x, branch = torch.randn(1, 5, 384), torch.randn(1, 5, 384)
    with torch.no_grad(), count_launches() as c:
        blk(x, Pending(branch, model.blocks[0].ls2.gamma))
    assert c.total == 7, c.to_dict()


def test_attention_maps_label_prefix_tokens_and_map_query():
    reg = fastvit.from_timm(timm_model("vit_base_patch14_reg4_dinov2", 28), backend="triton")
    x = torch.randn(2, 3, 28, 42)
    maps = reg.attention_maps(x)
    layout = reg.token_layout()
    assert set(layout) == {"cls", "reg", "patches"} and layout["reg"] == slice(1, 5)
    assert maps.shape == (2, 2, 12, 1 + 4 + 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 12))
    # equal to row 0 of the eager attention matrices
    full = copy.deepcopy(reg).set_backend("eager").attention_matrices(x)
    torch.testing.assert_close(maps, full[..., 0, :], rtol=1e-5, atol=1e-6)

    siglip = fastvit.from_timm(timm_model("vit_base_patch16_siglip_224", 32), backend="triton")
    maps = siglip.attention_maps(torch.randn(2, 3, 32, 48))
    assert maps.shape == (1, 2, 12, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, 12))

    gap = fastvit.from_timm(timm_model("vit_medium_patch16_gap_256", 32), backend="sdpa")
    with pytest.raises(ValueError, match="needs a query token"):
        gap.attention_maps(torch.randn(1, 3, 32, 32))


def _train(model, steps=4, lr=1e-3):
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = torch.randn(4, 3, 28, 28, generator=g), torch.randint(0, 5, (4,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _without_key_bias(name, p, dim):
    # A key bias adds the same q.b_k to every logit of a row, which softmax cancels: its true
    # gradient is 0 and AdamW turns either backend's rounding noise into lr-sized steps in random
    # directions. Compare the query and value parts only (as tests/test_end_to_end.py does).
    if name.endswith("attn.qkv.bias"):
        return torch.cat([p[:dim], p[2 * dim:]])
    if name.endswith("attn_pool.kv.bias"):
        return p[dim:]
    return p


@pytest.mark.parametrize("kw", [dict(init_values=1e-1, reg_tokens=2, no_embed_class=True),
                                dict(class_token=False, global_pool="map")], ids=["layerscale-reg", "map"])
def test_training_parity_triton_vs_eager(kw):
    torch.manual_seed(0)
    eager = fastvit.FastViT(img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=2, num_classes=5,
                            backend="eager", **kw)
    fused = copy.deepcopy(eager).set_backend("triton")
    # every parameter's gradient, once, at fp32 accuracy
    x, y = torch.randn(4, 3, 28, 28), torch.randint(0, 5, (4,))
    for m in (fused, eager):
        F.cross_entropy(m.train()(x), y).backward()
    for (name, p), q in zip(fused.named_parameters(), eager.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name
        p.grad = q.grad = None
    # then a few AdamW steps: the losses agree to fp32 accuracy. AdamW moves a weight by
    # lr * m / (sqrt(v) + eps): an entry whose true gradient is ~0 (a GELU unit that is off for
    # every token) has a rounding-noise gradient of ~1e-9, close to eps = 1e-8, and so moves by a
    # noise-driven fraction of lr, differently on each backend. Weights are held to 5 % of the
    # largest total move (steps * lr); a wrong gradient moves many entries by whole steps.
    lr, steps = 1e-3, 4
    for step, (a, b) in enumerate(zip(_train(fused, steps, lr), _train(eager, steps, lr))):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: triton loss {a} vs eager {b}"
    for (name, p), q in zip(fused.named_parameters(), eager.parameters()):
        p, q = _without_key_bias(name, p, 64), _without_key_bias(name, q, 64)
        assert (p - q).abs().max() <= 0.05 * lr * steps, name


def test_load_checkpoint_reads_these_layouts(tmp_path):
    from safetensors.torch import save_file
    src = timm_model("vit_base_patch14_reg4_dinov2", 56)
    path = tmp_path / "dinov2_reg.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    ours = fastvit.FastViT(img_size=28, patch_size=14, embed_dim=768, depth=2, num_heads=12, num_classes=0,
                           init_values=1e-5, reg_tokens=4, no_embed_class=True, backend="sdpa")
    fastvit.load_checkpoint(ours, path)  # pos_embed resampled from 4x4 to 2x2 patches
    x = torch.randn(1, 3, 28, 28)
    assert rel_err(ours(x), src(x)) <= 1e-5


def test_overlay_leaves_register_tokens_out():
    from fastvit.viz import cls_heatmap
    model = fastvit.from_timm(timm_model("vit_base_patch14_reg4_dinov2", 28), backend="sdpa")
    maps = model.attention_maps(torch.randn(1, 3, 42, 28))
    heat = cls_heatmap(maps, prefix_tokens=model.num_prefix_tokens, image_size=(42, 28))
    assert heat.shape == (3, 2)
    torch.testing.assert_close(heat.flatten(), maps[-1, 0, :, 5:].mean(0).double())
    with pytest.raises(ValueError, match="prefix_tokens must be an int"):
        cls_heatmap(maps, prefix_tokens=11)


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_base_patch14_reg4_dinov2",
                                  "vit_base_patch16_siglip_224", "vit_base_patch16_clip_224"])
def test_init_weights_sets_every_parameter(monkeypatch, name):
    """Modules are built on the meta device and given storage by to_empty: poison that storage, so
    a parameter init_weights forgot would show as NaN."""
    original = fastvit.FastViT.to_empty

    def poisoned(self, *, device, recurse=True):
        out = original(self, device=device, recurse=recurse)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(float("nan"))
        return out
    monkeypatch.setattr(fastvit.FastViT, "to_empty", poisoned)
    model = fastvit.create_model(name, depth=1, img_size=28 if "14" in name else 32)
    for key, p in model.named_parameters():
        assert torch.isfinite(p).all(), key
    if "dinov2" in name:
        assert torch.equal(model.blocks[0].ls1.gamma, torch.full((768,), 1e-5))


def test_dynamic_img_size_false_refuses_other_sizes_as_timm_does():
    fixed = fastvit.FastViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, dynamic_img_size=False)
    fixed(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"must be the model's img_size \(32, 32\) \(dynamic_img_size=False\)"):
        fixed(torch.randn(1, 3, 32, 48))
    fixed.set_img_size((32, 48))
    assert fixed(torch.randn(1, 3, 32, 48)).shape == (1, 1000)
