"""FastViT on a list of images of different sizes (packed, no padding) equals FastViT on each
image alone, on every backend, outputs and gradients."""
import pytest
import torch

import fastvit
from tests._tolerances import rel_err

CASES = {
    "vit": dict(),
    "map-no-cls": dict(global_pool="map", class_token=False),
    "registers-layerscale": dict(reg_tokens=2, init_values=0.1, no_embed_class=True),
    "qknorm-avg": dict(qk_norm=True, global_pool="avg"),
    "distilled": dict(dist_token=True),
    # Eva blocks: per-token rotary tables (identity rows on the prefix tokens), q/v bias, gated MLP
    "eva02-rope-swiglu": dict(rope="eva02", mlp_layer="swiglu_packed", global_pool="avg"),
    "dinov3-rope-registers": dict(rope="dinov3", reg_tokens=2, init_values=0.1, pos_embed="none"),
}


def _model(backend, **kw):
    torch.manual_seed(0)
    return fastvit.FastViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5,
                           backend=backend, **kw).eval()


def _images():
    # a 3 x 3 grid, a non-square 2 x 5 one, a single patch, and two of one size (one patch embedding)
    return [torch.randn(3, 24, 24), torch.randn(3, 16, 40), torch.randn(3, 8, 8), torch.randn(3, 8, 8)]


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_list_equals_each_image_alone(case, backend):
    model = _model(backend, **CASES[case])
    images = [im.requires_grad_(True) for im in _images()]
    out = model(images)
    assert out.shape == (4, 5)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), images)
    for i, im in enumerate(images):
        alone = im.detach().clone().requires_grad_(True)
        ref = model(alone[None])
        (g,) = torch.autograd.grad((ref * w[i:i + 1]).sum(), alone)
        assert rel_err(out[i:i + 1], ref) <= 1e-5, i
        assert rel_err(grads[i], g) <= 1e-5, i


def test_parameter_gradients_equal_the_per_image_sum():
    model = _model("triton", reg_tokens=1, init_values=0.5)
    images = _images()
    model(images).square().sum().backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for im in images:
        model(im[None]).square().sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(packed[n], p.grad) <= 1e-5, n


def test_forward_features_returns_packed_tokens_and_cu_seqlens():
    model = _model("sdpa")
    images = _images()
    tokens, cu = model.forward_features(images)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 10, 21, 23, 25]
    assert tokens.shape == (25, 32)
    for i, im in enumerate(images):
        torch.testing.assert_close(tokens[cu[i]:cu[i + 1]], model.forward_features(im[None])[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("images, words", [
    ([], "non-empty list"),
    ([torch.randn(3, 32, 30)], r"images\[0\] has sides \(32, 30\); they must be positive multiples"),
    ([torch.randn(3, 32, 32), torch.randn(1, 32, 32)], r"images\[1\] must have shape \(3, H, W\)"),
    ([torch.randn(3, 8, 8), torch.randn(3, 8, 8, dtype=torch.float64)], r"images\[1\] is torch.float64"),
    ([torch.randn(3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.int64)], r"images\[1\] must have a floating dtype"),
    ([torch.randn(3, 8, 8), "x"], r"images\[1\] must be a torch.Tensor"),
])
def test_bad_lists_are_named_before_any_work(images, words):
    with pytest.raises((ValueError, TypeError), match=words):
        _model("triton")(images)
