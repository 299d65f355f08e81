"""NaFlex (issue 14): timm's NaFlexVit converted with ``from_timm`` and held to timm's own
padded-and-masked outputs (logits, pooled features, tokens) and input gradients, fp32 relative
error <= 1e-5, on NaFlex batches from timm's own Patchify and NaFlexCollator (images of
different sizes and aspect ratios), on image batches and on lists; a plain FastViT on NaFlex
batches; clear errors for bad batches; refusals by name.

timm's registered configurations at depth 2, width 64 (2 heads) and a 4 x 4 position table, so
the images' grids (3 x 4, 4 x 2, 1 x 5, 4 x 4) resample it up, down and not at all; random
weights everywhere (timm zero-initialises some, which would hide a missing term)."""
import pytest
import torch

import fastvit
from fastvit.naflex import NaFlexFastViT
from fastvit.profiling.launches import count_launches
from tests._tolerances import rel_err

timm = pytest.importorskip("timm")
from timm.data.naflex_dataset import NaFlexCollator  # noqa: E402
from timm.data.naflex_transforms import Patchify  # noqa: E402

SIZES = [(48, 64), (64, 32), (16, 80), (64, 64)]  # patch grids 3x4, 4x2, 1x5, 4x4 (the table's own)
L = 20  # every image padded to 20 patches (16 at most are valid)


def timm_model(name, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, depth=2, embed_dim=64, num_heads=2, pos_embed_grid_size=(4, 4),
                          num_classes=5, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
        # position embeddings as large as the patch projections (std ~1.4): a resampling that is
        # off shows in every output, not only in the last digits
        m.embeds.pos_embed.normal_(0.0, 1.0)
    return m.eval()


def naflex_batch(sizes=SIZES, patch=16):
    """timm's own pipeline (Patchify, then NaFlexCollator), with the padding patches filled with
    noise: a model that let them leak into a valid output would be caught."""
    patchify = Patchify(patch)
    batch, _ = NaFlexCollator(max_seq_len=L)([(patchify(torch.randn(3, h, w)), 0) for h, w in sizes])
    pad = ~batch["patch_valid"]
    batch["patches"][pad] = torch.randn(int(pad.sum()), batch["patches"].shape[-1])
    return batch


def _outputs_and_grad(model, batch, ours):
    """Logits of the forward, forward_features' tokens at valid positions, pre_logits, and the
    gradient w.r.t. ``patches`` of a fixed combination of pooled features and logits."""
    b = dict(batch, patches=batch["patches"].clone().requires_grad_(True))
    logits = model(b)
    if ours:
        feats = model.forward_features(b)
        tokens = feats["patches"]
    else:
        feats = model.forward_features(b["patches"], b["patch_coord"], b["patch_valid"])
        tokens = feats["patches"]
    pooled = model.forward_head(feats, pre_logits=True) if ours else model.forward_head(**feats, pre_logits=True)
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in (pooled, logits))
    (g,) = torch.autograd.grad(loss, b["patches"])
    keep = torch.cat([torch.ones(len(SIZES), model.num_prefix_tokens, dtype=torch.bool), b["patch_valid"]], 1)
    return logits.detach(), tokens.detach()[keep], pooled.detach(), g


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("name", ["naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip"])
def test_naflex_batch_equals_timm(name, backend):
    src = timm_model(name)
    ours = fastvit.from_timm(src, backend=backend)
    assert isinstance(ours, NaFlexFastViT)
    batch = naflex_batch()
    mine, theirs = _outputs_and_grad(ours, batch, True), _outputs_and_grad(src, batch, False)
    for what, a, b in zip(("logits", "valid tokens", "pre_logits", "patches gradient"), mine, theirs):
        assert rel_err(a, b) <= 1e-5, what
    grad = mine[-1]
    assert torch.all(grad[~batch["patch_valid"]] == 0) and grad[batch["patch_valid"]].abs().min() > 0


@pytest.mark.parametrize("name", ["naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip"])
def test_parameter_gradients_equal_timm(name):
    """Every parameter's gradient on a NaFlex batch, the position table's (through the per-grid
    resampling and the per-coordinate rows) and the prefix tokens' included."""
    src = timm_model(name)
    ours = fastvit.from_timm(src, backend="sdpa")
    batch = naflex_batch()
    w = torch.randn(len(SIZES), 5)
    for m in (ours, src):
        (m(batch) * w).sum().backward()
    theirs = dict(src.named_parameters())
    assert {n for n, _ in ours.named_parameters()} == set(theirs)
    for n, p in ours.named_parameters():
        a, b = p.grad, theirs[n].grad
        # a key bias adds one constant to a whole score row, which softmax cancels: its true
        # gradient is 0 and both sides hold rounding noise; compare the query and value parts
        if n.endswith("attn.qkv.bias"):
            a, b = (torch.cat([g[:64], g[128:]]) for g in (a, b))
        elif n.endswith("attn_pool.kv.bias"):
            a, b = a[64:], b[64:]
        assert rel_err(a, b) <= 1e-5, n


@pytest.mark.parametrize("name", ["naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip",
                                  "naflexvit_base_patch16_par_gap"])
def test_image_batches_and_lists_equal_timm(name):
    src = timm_model(name)
    ours = fastvit.from_timm(src, backend="sdpa")
    for hw in [(64, 64), (32, 80)]:  # the table's grid, then 2 x 5
        x = torch.randn(2, 3, *hw, requires_grad=True)
        a, b = ours(x), src(x)
        assert rel_err(a, b) <= 1e-5, hw
        w = torch.randn_like(b)
        assert rel_err(*(torch.autograd.grad((o * w).sum(), x)[0] for o in (a, b))) <= 1e-5, hw
    images = [torch.randn(3, h, w) for h, w in SIZES]
    assert rel_err(ours(images), torch.cat([src(im[None]) for im in images])) <= 1e-5
    if name.endswith("par_gap"):  # the aspect-preserving table on a NaFlex batch too
        batch = naflex_batch()
        assert rel_err(ours(batch), src(batch)) <= 1e-5


def test_triton_runs_the_packed_varlen_kernels_and_no_padding():
    ours = fastvit.from_timm(timm_model("naflexvit_base_patch16_siglip"), backend="triton")
    batch = naflex_batch()
    with torch.no_grad(), count_launches() as c:
        ours(batch)
    assert any("varlen" in k for k in c.triton), c.to_dict()
    assert not any("scaled_dot_product" in k for k in c.torch), c.to_dict()
    # the blocks' qkv Linear saw the valid tokens only: 41 patches and no prefix token (siglip has none)
    seen = []
    hook = ours.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        ours(batch)
    hook.remove()
    assert seen == [torch.Size([1, int(batch["patch_valid"].sum()), 64])]


def test_resampling_settings_matter_on_this_batch():
    """The parity tests can fail: timm's interpolation mode or antialias, changed, moves the valid
    tokens and the logits well past the 1e-5 they are held to."""
    src = timm_model("naflexvit_base_patch16_siglip")
    ours = fastvit.from_timm(src, backend="sdpa")
    batch = naflex_batch()
    ref_logits, ref_tokens, _, _ = _outputs_and_grad(src, batch, False)
    for attr, value in (("interp_mode", "bicubic"), ("antialias", False)):
        right = getattr(ours.embeds, attr)
        setattr(ours.embeds, attr, value)
        logits, tokens, _, _ = _outputs_and_grad(ours, batch, True)
        assert rel_err(tokens, ref_tokens) > 1e-3 and rel_err(logits, ref_logits) > 1e-4, attr
        setattr(ours.embeds, attr, right)
    logits, tokens, _, _ = _outputs_and_grad(ours, batch, True)
    assert rel_err(tokens, ref_tokens) <= 1e-5 and rel_err(logits, ref_logits) <= 1e-5


def test_plain_fastvit_takes_naflex_batches():
    """A FastViT converted from timm's VisionTransformer (class token embedded with the patches,
    a register token, bicubic resampling) on a NaFlex batch equals timm on each image alone."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    src = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, reg_tokens=1,
                            num_classes=5, dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    batch = naflex_batch()
    images = [patches[valid].view(h // 16, w // 16, 16, 16, 3).permute(4, 0, 2, 1, 3).reshape(3, h, w)
              for patches, valid, (h, w) in zip(batch["patches"], batch["patch_valid"], SIZES)]
    ref = torch.cat([src(im[None]) for im in images])
    for backend in ("sdpa", "triton"):
        ours = fastvit.from_timm(src, backend=backend)
        assert type(ours) is fastvit.FastViT
        assert rel_err(ours(batch), ref) <= 1e-5, backend
    feats = ours.forward_features(batch)
    assert feats["patches"].shape == (4, 2 + L, 64)
    assert torch.all(feats["patches"][:, 2:][~batch["patch_valid"]] == 0)


def test_keys_and_shapes_are_timms_and_init_sets_everything(monkeypatch):
    for name in ("naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip"):
        with torch.device("meta"):
            src = timm.create_model(name, pretrained=False)
            ours = fastvit.from_timm(src)
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in src.state_dict().items()}, name
    # built directly (not converted): storage poisoned with NaN when allocated, so a parameter
    # init_weights forgot shows; then timm's weights load strictly
    original = NaFlexFastViT.to_empty

    def poisoned(self, *, device, recurse=True):
        out = original(self, device=device, recurse=recurse)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(float("nan"))
        return out
    monkeypatch.setattr(NaFlexFastViT, "to_empty", poisoned)
    src = timm_model("naflexvit_base_patch16_gap")
    ours = NaFlexFastViT(patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=5, reg_tokens=4,
                         init_values=1e-5, global_pool="avg", fc_norm=True, pos_embed_grid_size=(4, 4),
                         backend="sdpa").eval()
    for key, p in ours.named_parameters():
        assert torch.isfinite(p).all(), key
    assert ours.embeds.pos_embed.std() > 0.01 and ours.reg_token is ours.embeds.reg_token
    ours.load_state_dict(src.state_dict(), strict=True)
    batch = naflex_batch()
    assert rel_err(ours(batch), src(batch)) <= 1e-5


def _bad(batch, **changes):
    out = dict(batch)
    for k, v in changes.items():
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


def test_bad_batches_are_named():
    model = fastvit.from_timm(timm_model("naflexvit_base_patch16_gap"), backend="sdpa")
    b = naflex_batch()
    P, C, V = b["patches"], b["patch_coord"], b["patch_valid"]
    empty = V.clone()
    empty[2] = False
    negative = C.clone()
    negative[1, 0, 1] = -1
    cases = [
        (_bad(b, patch_coord=None), KeyError, "missing 'patch_coord'"),
        (_bad(b, patches=None, patch_valid=None), KeyError, "missing 'patches', 'patch_valid'"),
        (_bad(b, patches=P[..., :-1]), ValueError, r"batch\['patches'\] must be a floating \(B, L, 768\)"),
        (_bad(b, patches=P[0]), ValueError, r"batch\['patches'\] must be .* got torch.float32 of shape \(20, 768\)"),
        (_bad(b, patch_coord=C[:, :-1]), ValueError, r"batch\['patch_coord'\] must be an integer \(B, L, 2\) = "
                                                     r"\(4, 20, 2\) .* shape \(4, 19, 2\)"),
        (_bad(b, patch_coord=C.float()), ValueError, r"batch\['patch_coord'\] must be an integer .* torch.float32"),
        (_bad(b, patch_valid=V.long()), ValueError, r"batch\['patch_valid'\] must be a bool .* got torch.int64"),
        (_bad(b, patch_valid=V[:3]), ValueError, r"batch\['patch_valid'\] must be a bool \(B, L\) = \(4, 20\)"),
        (_bad(b, patch_valid=empty), ValueError, r"batch\['patch_valid'\]\[2\] has no valid patch"),
        (_bad(b, patch_coord=negative), ValueError, r"batch\['patch_coord'\]\[1\] has a negative coordinate"),
        (_bad(b, patch_valid=V.tolist()), TypeError, r"batch\['patch_valid'\] must be a torch.Tensor, got list"),
        (dict(b, attn_mask=torch.zeros(4, 1, 20, 20)), ValueError, r"batch\['attn_mask'\] is not supported"),
    ]
    for batch, error, words in cases:
        with pytest.raises(error, match=words):
            model(batch)
    with pytest.raises(ValueError, match=r"images\[1\] must be a \(C, H, W\) tensor"):
        model([torch.randn(3, 16, 16), torch.randn(16, 16)])
    with pytest.raises(ValueError, match="must be positive multiples of the patch size"):
        model(torch.randn(1, 3, 16, 24))


@pytest.mark.parametrize("kw, words", [
    (dict(pos_embed="factorized"), "pos_embed='factorized' is not supported"),
    (dict(pos_embed_use_grid_sample=True), "grid_sample"),
    (dict(global_pool="max"), "global_pool='max' is not supported"),
    (dict(embed_proj_type="conv"), "embed_proj_type='conv'"),
    (dict(rope_type="axial"), "EVA-style blocks|rope"),
])
def test_refused_by_name(kw, words):
    with torch.device("meta"):
        src = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, depth=1, embed_dim=64, num_heads=2,
                                **kw)
    with pytest.raises(fastvit.convert.UnsupportedModelError, match=words):
        fastvit.from_timm(src)
