"""CLS attention maps from the saved logsumexp, and their rendering over images (fastvit.viz)."""
import copy
import sys

import numpy as np
import pytest
import torch

import fastvit
from fastvit import FastViT, reference, viz
from tests._tolerances import rel_err

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=10)


def peaked_model(backend, **kw):
    """Random init gives nearly uniform attention; larger qkv weights make the rows peaked, so a
    wrong row, head or layer cannot pass for a right one."""
    model = FastViT(**{**SMALL, **kw}, backend=backend)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(6.0)
    return model.eval()


def forward_cls_rows64(model, x):
    """The oracle: run the model's own forward, catch each block's qkv Linear output, and take row
    0 of the full attention matrix in float64 (``reference.attention_probs``)."""
    caught = []
    hooks = [blk.attn.qkv.register_forward_hook(lambda m, i, o: caught.append(o.detach()))
             for blk in model.blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for blk, qkv in zip(model.blocks, caught):
        B, N, _ = qkv.shape
        q, k, _ = qkv.double().view(B, N, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        rows.append(reference.attention_probs(q, k, blk.attn.scale)[:, :, 0])
    return torch.stack(rows)


def check_maps(model, x):
    maps = model.attention_maps(x)
    depth, heads = len(model.blocks), model.num_heads
    tokens = (x.shape[-2] // 8) * (x.shape[-1] // 8) + 1
    assert maps.shape == (depth, x.shape[0], heads, tokens)
    assert maps.dtype == torch.float32 and not maps.requires_grad
    expected = forward_cls_rows64(model, x)
    assert expected.max() > 3.0 / tokens, "test model's attention is too flat to tell rows apart"
    err = rel_err(maps, expected)
    assert err <= 1e-5, f"CLS attention rows: relative error {err:.3g}"
    torch.testing.assert_close(maps.double().sum(-1), torch.ones(maps.shape[:3], dtype=torch.float64),
                               rtol=0, atol=1e-5)
    return maps


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_attention_maps_equal_row0_of_the_attention_matrix(backend):
    model = peaked_model(backend)
    # 32 x 48 input on a 32 x 32 model: a 4 x 6 patch grid and resampled position embeddings
    check_maps(model, torch.randn(2, 3, 32, 48))


def test_attention_maps_triton_uses_the_kernel_lse_and_no_full_matrix(monkeypatch):
    model = peaked_model("triton")
    x = torch.randn(2, 3, 32, 32)

    def forbidden(*args, **kwargs):
        raise AssertionError("the triton path must not build an N x N attention matrix")

    with monkeypatch.context() as mp:
        mp.setattr(reference, "attention_probs", forbidden)
        mp.setattr(reference, "attention_lse", forbidden)
        fused = model.attention_maps(x)
    maps = check_maps(model, x)
    torch.testing.assert_close(fused, maps, rtol=0, atol=0)
    eager = copy.deepcopy(model).set_backend("eager").attention_maps(x)
    assert rel_err(fused, eager) <= 1e-5


def test_attention_maps_have_eval_semantics_and_keep_the_mode():
    model = peaked_model("eager", drop_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    expected = model.attention_maps(x)  # model is in eval mode here
    model.train()
    torch.manual_seed(1)
    a = model.attention_maps(x)
    torch.manual_seed(2)
    b = model.attention_maps(x)
    assert model.training
    torch.testing.assert_close(a, expected, rtol=0, atol=0)
    torch.testing.assert_close(b, expected, rtol=0, atol=0)


def test_attention_matrices_only_on_eager_and_agree_with_maps():
    model = peaked_model("eager")
    x = torch.randn(1, 3, 32, 32)
    full = model.attention_matrices(x)
    assert full.shape == (3, 1, 4, 17, 17)
    torch.testing.assert_close(full[..., 0, :], model.attention_maps(x), rtol=0, atol=1e-6)
    model.set_backend("sdpa")
    with pytest.raises(RuntimeError, match="eager"):
        model.attention_matrices(x)


def test_attention_maps_reject_bad_input():
    model = peaked_model("eager")
    with pytest.raises(ValueError, match="channels"):
        model.attention_maps(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.attention_maps(torch.randn(1, 3, 30, 32))


# -- rendering -----------------------------------------------------------------------------------
def hand_maps(depth=2, batch=1, heads=2, grid=(4, 6), hot=(2, 5)):
    """CLS rows where head 0 of the last layer looks at patch ``hot`` and head 1 at patch (0, 0)."""
    n = grid[0] * grid[1]
    maps = torch.full((depth, batch, heads, n + 1), 0.1)
    maps[:, :, 0, 1 + hot[0] * grid[1] + hot[1]] = 5.0
    maps[:, :, 1, 1] = 3.0
    return maps / maps.sum(-1, keepdim=True)


def test_overlay_writes_a_png_of_the_image_size(tmp_path):
    from PIL import Image
    img = torch.rand(3, 64, 96)
    out = viz.overlay(img, hand_maps(), path=tmp_path / "sub" / "attn.png")
    assert isinstance(out, np.ndarray) and out.shape == (64, 96, 3) and out.dtype == np.uint8
    png = Image.open(tmp_path / "sub" / "attn.png")
    assert png.format == "PNG" and png.size == (96, 64) and png.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(png), out)
    # a PIL image in gives a PIL image out
    pil = viz.overlay(Image.fromarray(out), hand_maps())
    assert isinstance(pil, Image.Image) and pil.size == (96, 64)


def test_overlay_puts_the_heat_on_the_attended_patch():
    img = np.full((64, 96, 3), 128, dtype=np.uint8)  # 4 x 6 patches of 16 px
    out = viz.overlay(img, hand_maps(hot=(2, 5)), head=0, alpha=1.0).astype(float).sum(-1)
    hot = out[2 * 16 + 8, 5 * 16 + 8]
    assert hot == out.max()
    assert hot > out[8, 8] + 200 and hot > out[56, 8] + 200  # colder patches are darker
    heat = viz.cls_heatmap(hand_maps(hot=(2, 5)), head=0, image_size=(64, 96))
    assert heat.shape == (4, 6) and heat.argmax().item() == 2 * 6 + 5
    # alpha = 0 leaves the image untouched
    np.testing.assert_array_equal(viz.overlay(img, hand_maps(), alpha=0.0), img)


def test_overlay_mean_over_heads_differs_from_one_head():
    img = torch.rand(3, 32, 48)
    maps = hand_maps()
    mean = viz.overlay(img, maps)
    h0, h1 = viz.overlay(img, maps, head=0), viz.overlay(img, maps, head=1)
    assert (mean != h0).any() and (mean != h1).any() and (h0 != h1).any()
    np.testing.assert_array_equal(viz.overlay(img, maps, head=-1), h1)


def test_overlay_on_a_model_and_rollout(tmp_path):
    from PIL import Image
    model = peaked_model("eager")
    x = torch.randn(1, 3, 32, 32)
    plain = viz.overlay(x[0], model.attention_maps(x), path=tmp_path / "cls.png")
    full = model.attention_matrices(x)
    np.testing.assert_array_equal(viz.overlay(x[0], full), plain)  # full matrices: row 0 is used
    rolled = viz.overlay(x[0], full, rollout=True, path=tmp_path / "rollout.png")
    assert Image.open(tmp_path / "rollout.png").size == (32, 32)
    assert (rolled != plain).any()


def test_rollout_is_the_product_of_identity_mixed_mean_attention():
    torch.manual_seed(0)
    full = torch.softmax(torch.randn(3, 2, 4, 5, 5) * 3, dim=-1)
    got = viz.attention_rollout(full)
    expected = torch.eye(5, dtype=torch.float64).expand(2, 5, 5)
    for layer in range(3):
        a = 0.5 * full[layer].double().mean(1) + 0.5 * torch.eye(5, dtype=torch.float64)
        expected = torch.bmm(a / a.sum(-1, keepdim=True), expected)
        torch.testing.assert_close(got[layer], expected)
    torch.testing.assert_close(got.sum(-1), torch.ones(3, 2, 5, dtype=torch.float64))
    heat = viz.cls_heatmap(full, layer=1, rollout=True, index=1, grid=(2, 2))
    torch.testing.assert_close(heat.flatten(), got[1, 1, 0, 1:])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(layer=2), ValueError, r"layer=2 is out of range.*2 layers"),
    (dict(layer=-3), ValueError, r"layer=-3 is out of range"),
    (dict(head=2), ValueError, r"head=2 is out of range.*2 heads"),
    (dict(head=1.0), TypeError, r"head must be an int"),
    (dict(index=1), ValueError, r"index=1 is out of range"),
    (dict(rollout=True), ValueError, r"rollout=True needs the full attention matrices.*attention_matrices"),
    (dict(alpha=1.5), ValueError, r"alpha must be a float in \[0, 1\]"),
    (dict(cmap="no-such-map"), ValueError, r"cmap must be a matplotlib colour map"),
    (dict(grid=(5, 5)), ValueError, r"grid must be a pair .* = 24 patches"),
    (dict(path="attn.jpg"), ValueError, r"path must end in .png"),
])
def test_overlay_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        viz.overlay(torch.rand(3, 32, 48), hand_maps(), **kwargs)


@pytest.mark.parametrize("maps, match", [
    (torch.rand(2, 3, 25), r"maps must have shape \(depth, B, heads, N\)"),
    (torch.rand(2, 1, 3, 25, 24), r"maps must have shape"),
    (torch.rand(2, 1, 3, 1), r"at least one patch"),
])
def test_overlay_wrong_map_shape(maps, match):
    with pytest.raises(ValueError, match=match):
        viz.overlay(torch.rand(3, 32, 32), maps)


def test_overlay_bad_image():
    with pytest.raises(ValueError, match=r"image tensor must be \(C, H, W\)"):
        viz.overlay(torch.rand(2, 3, 32, 32), hand_maps())
    with pytest.raises(TypeError, match="image must be a PIL image"):
        viz.overlay([[0.0]], hand_maps())


def test_overlay_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"fastvit\[plot\]"):
        viz.overlay(torch.rand(3, 32, 48), hand_maps())
