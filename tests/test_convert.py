"""Conversion from timm and torchvision, and checkpoint loading, against the source models."""
import pytest
import torch

import fastvit
from fastvit import FastViT, load_checkpoint
from fastvit.convert import UnsupportedModelError, torchvision_to_timm
from tests._tolerances import rel_err

timm = pytest.importorskip("timm")
tv_vit = pytest.importorskip("torchvision.models.vision_transformer")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402


def _check_same_function(ours, theirs, x):
    """Logits and the gradient with respect to the image agree within 1e-5 (fp32, eval)."""
    ours.eval()
    theirs.eval()
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = ours(x1), theirs(x2)
    w = torch.randn_like(y2)  # a random cotangent, so every logit matters
    (g1,) = torch.autograd.grad((y1 * w).sum(), x1)
    (g2,) = torch.autograd.grad((y2 * w).sum(), x2)
    assert rel_err(y1, y2) <= 1e-5
    assert rel_err(g1, g2) <= 1e-5


TIMM_CASES = {
    # name: (timm kwargs, image sizes to try: native first)
    "tiny16": (dict(img_size=224, patch_size=16, embed_dim=192, depth=3, num_heads=3), [(224, 224), (160, 288)]),
    "small16_avg": (dict(img_size=64, patch_size=16, embed_dim=384, depth=2, num_heads=6, global_pool="avg"),
                    [(64, 64), (96, 48)]),
    "base32": (dict(img_size=224, patch_size=32, embed_dim=768, depth=2, num_heads=12), [(224, 224), (384, 384)]),
    "huge14_hd80": (dict(img_size=56, patch_size=14, embed_dim=1280, depth=1, num_heads=16, num_classes=5),
                    [(56, 56), (70, 42)]),
    "cifar_tanh_nobias": (dict(img_size=32, patch_size=4, embed_dim=96, depth=2, num_heads=3, num_classes=10,
                               qkv_bias=False, act_layer=lambda: torch.nn.GELU(approximate="tanh")),
                          [(32, 32), (40, 24)]),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_from_timm_equals_timm(case):
    kwargs, sizes = TIMM_CASES[case]
    src = TimmViT(dynamic_img_size=True, **kwargs)
    # timm zero-inits the head; give it values so the comparison covers it
    torch.nn.init.normal_(src.head.weight, std=0.02)
    ours = fastvit.from_timm(src, backend="eager")
    for h, w in sizes:
        _check_same_function(ours, src, torch.randn(2, 3, h, w))


def test_from_timm_keeps_names_and_loads_state_dict_strictly():
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    ours = FastViT(embed_dim=192, depth=2, num_heads=3)
    ours.load_state_dict(src.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(src.state_dict())


def test_set_img_size_equals_timm_dynamic():
    src = TimmViT(img_size=64, patch_size=16, embed_dim=96, depth=2, num_heads=3, dynamic_img_size=True)
    ours = fastvit.from_timm(src, backend="sdpa").set_img_size((96, 80))
    assert ours.pos_embed.shape == (1, 1 + 6 * 5, 96)
    _check_same_function(ours, src, torch.randn(2, 3, 96, 80))


def _swiglu(**kw):
    from timm.layers import SwiGLUPacked
    return SwiGLUPacked(**kw)


@pytest.mark.parametrize("kwargs, feature", [
    (dict(global_pool="avgmax"), r"global_pool='avgmax' is not supported"),
    (dict(scale_mlp_norm=True), r"an MLP other than fc1 -> GELU -> fc2 in blocks.0 .* is not supported"),
    (dict(scale_attn_norm=True), r"a norm inside attention in blocks.0 \(scale_attn_norm\) is not supported"),
    (dict(final_norm=False), r"neither of norm and fc_norm \(final_norm=False\) is not supported"),
    (dict(mlp_layer=_swiglu), r"an MLP other than fc1 -> GELU -> fc2"),
    (dict(pos_embed="none"), r"without absolute position embeddings"),
    (dict(act_layer=torch.nn.SiLU), r"the activation SiLU in blocks.0 is not supported"),
    (dict(norm_layer="rmsnorm"), r"is a RmsNorm; only LayerNorm with weight and bias is supported"),
])
def test_from_timm_refuses_unsupported_features(kwargs, feature):
    src = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, **kwargs)
    with pytest.raises(UnsupportedModelError, match=feature):
        fastvit.from_timm(src)


def test_from_timm_refuses_other_classes_by_name():
    with pytest.raises(TypeError, match="timm VisionTransformer .* got Linear"):
        fastvit.from_timm(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match=r"timm Eva: a model without rotary position embeddings \(EVA-01"):
        fastvit.from_timm(timm.create_model("eva02_tiny_patch14_224", depth=1, use_rot_pos_emb=False))
    with pytest.raises(UnsupportedModelError, match="Apple's FastViT"):
        fastvit.from_timm(timm.create_model("fastvit_t8"))
    with pytest.raises(UnsupportedModelError, match="blocks.0 is a ParallelScalingBlock"):
        # timm's *_xp_* models: parallel blocks with RMSNorm
        fastvit.from_timm(timm.create_model("vit_large_patch14_xp_224", depth=1, embed_dim=64, num_heads=2,
                                            img_size=28))


TV_CASES = {
    # torchvision's builders, shallower: (image_size, patch_size, hidden_dim, num_heads, mlp_dim, num_layers)
    "vit_b_16": (224, 16, 768, 12, 3072, 2),
    "vit_b_32": (224, 32, 768, 12, 3072, 2),
    "vit_l_16": (224, 16, 1024, 16, 4096, 1),
    "vit_l_32": (224, 32, 1024, 16, 4096, 1),
    "vit_h_14": (224, 14, 1280, 16, 5120, 1),
}


@pytest.mark.parametrize("name", sorted(TV_CASES))
def test_from_torchvision_equals_torchvision(name):
    image_size, patch, dim, heads, mlp, layers = TV_CASES[name]
    src = tv_vit.VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers, num_heads=heads,
                                   hidden_dim=dim, mlp_dim=mlp, num_classes=11)
    torch.nn.init.normal_(src.heads.head.weight, std=0.02)
    ours = fastvit.from_torchvision(src, backend="eager")
    assert ours.blocks[0].attn.head_dim == dim // heads
    _check_same_function(ours, src, torch.randn(2, 3, image_size, image_size))


def test_from_torchvision_builder_full_depth():
    src = tv_vit.vit_b_32(weights=None)
    ours = fastvit.from_torchvision(src, backend="sdpa")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in src.parameters())
    _check_same_function(ours, src, torch.randn(1, 3, 224, 224))


def test_from_torchvision_refuses_representation_size():
    src = tv_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                   mlp_dim=32, representation_size=8)
    with pytest.raises(UnsupportedModelError, match="representation_size"):
        fastvit.from_torchvision(src)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_checkpoint_timm_layout(tmp_path, suffix):
    src = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    torch.nn.init.normal_(src.head.weight, std=0.02)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(src.state_dict(), str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)
    ours = load_checkpoint(FastViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5,
                                   backend="eager"), path)
    _check_same_function(ours, src, torch.randn(2, 3, 32, 32))


def test_load_checkpoint_torchvision_layout_and_pos_resampling(tmp_path):
    src = tv_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48,
                                   mlp_dim=192, num_classes=5)
    path = tmp_path / "tv.pt"
    torch.save(src.state_dict(), path)
    # The same weights into a model built for 48 px: the 4x4 grid is resampled to 6x6 as timm does.
    ours = load_checkpoint(FastViT(img_size=48, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5,
                                   backend="eager"), path)
    ref = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5,
                  dynamic_img_size=True)
    ref.load_state_dict(torchvision_to_timm(src.state_dict()))
    _check_same_function(ours, ref, torch.randn(2, 3, 48, 48))


def test_load_checkpoint_reports_mismatches_key_by_key(tmp_path):
    src = TimmViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    sd = src.state_dict()
    sd.pop("blocks.1.norm2.bias")
    sd["extra.weight"] = torch.ones(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = FastViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    with pytest.raises(ValueError) as info:
        load_checkpoint(model, path)
    msg = str(info.value)
    assert "missing key blocks.1.norm2.bias" in msg
    assert "unexpected key extra.weight" in msg
    assert "head.weight: checkpoint shape (5, 48), model shape (10, 48)" in msg


def test_load_checkpoint_refuses_other_files(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match=".safetensors"):
        load_checkpoint(FastViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3), path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(FastViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3), tmp_path / "no.pt")


def test_load_checkpoint_names_another_width_and_files_that_are_not_checkpoints(tmp_path):
    model = FastViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3)
    src = TimmViT(img_size=32, patch_size=8, embed_dim=96, depth=1, num_heads=3)
    path = tmp_path / "wide.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match=r"width 96 in the checkpoint \(patch_embed.proj.weight\), 48 in the model"):
        load_checkpoint(model, path)
    # a pickle of something that is not tensors: weights_only refuses it; the message must not
    # suggest weights_only=False (that would run code from the file)
    path = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="is not a checkpoint fastvit can read") as info:
        load_checkpoint(model, path)
    assert "weights_only=False" not in str(info.value)
    path = tmp_path / "text.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a checkpoint fastvit can read"):
        load_checkpoint(model, path)
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(ValueError, match="must hold a dict of tensors"):
        load_checkpoint(model, path)
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="is not a readable .safetensors checkpoint"):
        load_checkpoint(model, path)
