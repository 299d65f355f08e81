"""fastvit.patch / unpatch on models built elsewhere (timm, transformers, open_clip; small widths,
random weights): outputs and input gradients equal the unpatched model's (fp32 relative error
<= 1e-5) on sdpa and triton, at the model's size and an interpolated one; unpatch restores
bitwise; the state dict, hooks and parameters are untouched; training and compile work."""
import copy

import pytest
import torch
import torch.nn as nn

import fastvit
from tests._tolerances import rel_err
from tests.test_integrations_transformers import hf_config, hf_model, randomize

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")


def timm_vit():
    from timm.models.vision_transformer import VisionTransformer
    return randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                                       init_values=1e-5, qk_norm=True, dynamic_img_size=True))


def open_clip_visual(**vision):
    cfg = dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16, **vision)
    model = open_clip.create_model("ViT-B-32", pretrained=None, embed_dim=16, vision_cfg=cfg,
                                   text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    return randomize(model.visual)


def clip_model():
    cfg = transformers.CLIPConfig(vision_config=hf_config("clip").to_dict(), projection_dim=16,
                                  text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64, vocab_size=64, bos_token_id=0,
                                                   eos_token_id=1, pad_token_id=1))
    return randomize(transformers.CLIPModel(cfg))


def _hf_out(key):
    def run(m, x, **kw):
        out = m(pixel_values=x, **kw)
        return out.last_hidden_state if key == "hidden" else out.pooler_output
    return run


# name: (builder, [(function of (model, x) -> output, its name)], second size or None, kwargs for it)
CASES = {
    "timm": (timm_vit, [(lambda m, x, **kw: m(x), "logits")], 24, {}),
    "hf_vit": (lambda: hf_model("vit"), [(_hf_out("hidden"), "hidden"), (_hf_out("pooled"), "pooled")], 48,
               {"interpolate_pos_encoding": True}),
    "hf_deit": (lambda: hf_model("deit"), [(_hf_out("hidden"), "hidden")], None, {}),
    "hf_dinov2": (lambda: hf_model("dinov2"), [(_hf_out("hidden"), "hidden"), (_hf_out("pooled"), "pooled")],
                  40, {}),
    "hf_clip_nested": (clip_model, [(lambda m, x, **kw: m.get_image_features(pixel_values=x, **kw).pooler_output,
                                     "image_embeds")], 48, {"interpolate_pos_encoding": True}),
    "hf_siglip": (lambda: hf_model("siglip"), [(_hf_out("hidden"), "hidden"), (_hf_out("pooled"), "pooled")], 48,
                  {"interpolate_pos_encoding": True}),
    "open_clip": (open_clip_visual, [(lambda m, x, **kw: m(x), "image_embeds")], None, {}),
}


def _run(model, fn, x, kw):
    x = x.clone().requires_grad_(True)
    out = fn(model, x, **kw)
    (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_patched_equals_unpatched(name, backend):
    build, outputs, other, other_kw = CASES[name]
    model = build()
    ref = copy.deepcopy(model)
    report = fastvit.patch(model, backend=backend)
    layers = [p for p in report.patched if p.endswith(("blocks.1", "layers.1", "layer.1", "resblocks.1"))]
    assert layers, str(report)
    sizes = [(32, {})] + ([(other, other_kw)] if other else [])
    for size, kw in sizes:
        x = torch.randn(2, 3, size, size)
        for fn, what in outputs:
            (y1, g1), (y2, g2) = _run(model, fn, x, kw), _run(ref, fn, x, kw)
            assert rel_err(y1, y2) <= 1e-5, (size, what)
            assert rel_err(g1, g2) <= 1e-5, (size, what, "input gradient")


def test_patch_reaches_the_fused_ops(monkeypatch):
    """The patched forwards call fastvit.ops (not the modules' own PyTorch code)."""
    from fastvit.integrations import _forwards
    seen = []
    for op in ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "qkv_attention"):
        real = getattr(_forwards.ops, op)
        monkeypatch.setattr(_forwards.ops, op, lambda *a, _r=real, _n=op, **k: seen.append(_n) or _r(*a, **k))
    for build in (timm_vit, lambda: hf_model("vit"), open_clip_visual):
        seen.clear()
        model = build()
        fastvit.patch(model, backend="sdpa")
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        assert {"layer_norm", "add_layer_norm", "linear_gelu"} <= set(seen), seen
        assert {"attention", "qkv_attention"} & set(seen), seen


@pytest.mark.parametrize("name", ["timm", "hf_dinov2", "open_clip"])
def test_unpatch_restores_bitwise_and_state_is_untouched(name):
    build, outputs, _, _ = CASES[name]
    model = build()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    sd = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    names = [n for n, _ in model.named_modules()]
    x = torch.randn(2, 3, 32, 32)
    fn = outputs[0][0]
    with torch.no_grad():
        before = fn(model, x)
        report = fastvit.patch(model, backend="triton")
        patched = fn(model, x)
        restored = fastvit.unpatch(model)
        after = fn(model, x)
    assert sorted(restored.patched) == sorted(report.patched)
    assert torch.equal(before, after)
    assert rel_err(patched, before) <= 1e-5
    assert len(calls) == 3   # the hook fired on every call, patched or not
    assert [n for n, _ in model.named_modules()] == names
    assert [p.requires_grad for p in model.parameters()] == flags
    now = model.state_dict()
    assert list(now) == list(sd)
    for k, (ptr, value) in sd.items():
        assert now[k].data_ptr() == ptr and torch.equal(now[k], value), k
    assert all("forward" not in m.__dict__ and "_fastvit_patch" not in m.__dict__ for m in model.modules())


def test_training_parity_adamw():
    """A patched DINOv2 (layer scale) trains as the unpatched one: same parameters after AdamW steps."""
    ref = hf_model("dinov2")
    model = copy.deepcopy(ref)
    fastvit.patch(model, backend="triton")
    ref.train(), model.train()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ref, model)]
    for _ in range(3):
        x = torch.randn(2, 3, 32, 32)
        for m, opt in zip((ref, model), opts):
            opt.zero_grad()
            m(pixel_values=x).pooler_output.square().mean().backward()
            opt.step()
    for (n, a), (_, b) in zip(ref.named_parameters(), model.named_parameters()):
        assert (a - b).abs().max().item() <= 1e-5, n


def test_compile_fullgraph_of_patched_timm_model():
    model = timm_vit()
    ref = copy.deepcopy(model)
    fastvit.patch(model, backend="triton")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(compiled(x), ref(x)) <= 1e-5


class OddAttention(nn.Module):
    """An attention class nobody listed."""
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x).softmax(-1)


def test_unlisted_modules_are_left_alone_and_named():
    from timm.models.eva import Eva
    eva = Eva(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    wrapper = nn.ModuleDict({"eva": eva, "odd": OddAttention(), "vit": timm_vit()})
    x = torch.randn(1, 8)
    before = wrapper["odd"](x)
    report = fastvit.patch(wrapper)
    assert "Eva" in report.skipped["eva"] and "rotary" in report.skipped["eva"]
    assert "OddAttention" in report.skipped["odd"]
    assert "vit.blocks.0" in report.patched and not any(p.startswith(("eva", "odd")) for p in report.patched)
    assert torch.equal(wrapper["odd"](x), before)
    assert "left alone: 2" in str(report) and "vit.blocks.0.attn" in str(report)


def test_layer_with_hooks_on_a_fused_norm_is_left_alone():
    model = timm_vit()
    model.blocks[1].norm2.register_forward_hook(lambda *a: None)
    report = fastvit.patch(model)
    assert "blocks.0" in report.patched and "blocks.1" not in report.patched
    assert "hooks" in report.skipped["blocks.1"]


def test_text_tower_is_left_alone():
    report = fastvit.patch(clip_model())
    assert "vision_model.encoder.layers.0" in report.patched
    assert "text tower" in report.skipped["text_model.encoder.layers.0.self_attn"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        fastvit.patch("vit")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastvit.patch(timm_vit(), backend="cuda")
