"""attn_implementation="fastvit": transformers vision models (built from configs, random weights)
held to the same models on "sdpa": outputs and input gradients, fp32 relative error <= 1e-5;
the fallbacks (masks, causal, output_attentions) answer exactly and warn once; compiles whole."""
import pytest
import torch

import fastvit
from tests._tolerances import rel_err

transformers = pytest.importorskip("transformers")
import fastvit.integrations.transformers as fit  # noqa: E402  (registers "fastvit")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


def hf_config(family: str, **kw):
    """A small config of each family (width 32, 2 heads of 16, depth 2, 32 px, 16 patches)."""
    T = transformers
    if family == "vit":
        return T.ViTConfig(**SMALL, intermediate_size=64, **kw)
    if family == "deit":
        return T.DeiTConfig(**SMALL, intermediate_size=64, **kw)
    if family == "dinov2":
        return T.Dinov2Config(**SMALL, **kw)
    if family == "dinov2_reg":
        return T.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=2, **kw)
    if family == "clip":
        return T.CLIPVisionConfig(**SMALL, intermediate_size=64, **kw)
    if family == "siglip":
        return T.SiglipVisionConfig(**SMALL, intermediate_size=64, **kw)
    raise ValueError(family)


MODEL_CLASSES = {"vit": "ViTModel", "deit": "DeiTModel", "dinov2": "Dinov2Model",
                 "dinov2_reg": "Dinov2WithRegistersModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


def randomize(model):
    """Random weights everywhere (zero-initialised biases and layer scales would hide a missing term)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    return model.eval()


def hf_model(family: str, cls: str | None = None, attn="sdpa", **cfg):
    klass = getattr(transformers, cls or MODEL_CLASSES[family])
    return randomize(klass._from_config(hf_config(family, **cfg), attn_implementation=attn))


def outputs_and_grad(model, x, **kw):
    """last_hidden_state, pooler_output (or None) and d(weighted sum of both)/d pixels."""
    x = x.clone().requires_grad_(True)
    out = model(pixel_values=x, **kw)
    hidden, pooled = out.last_hidden_state, out.pooler_output
    loss = (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum()
    if pooled is not None:
        loss = loss + (pooled * torch.linspace(1, -1, pooled.numel()).view_as(pooled)).sum()
    (g,) = torch.autograd.grad(loss, x)
    return hidden.detach(), None if pooled is None else pooled.detach(), g


@pytest.mark.parametrize("family", ["vit", "dinov2", "clip", "siglip"])
def test_fastvit_attention_equals_sdpa(family, monkeypatch):
    ref = hf_model(family)
    ours = hf_model(family, attn="fastvit")
    ours.load_state_dict(ref.state_dict())
    calls = []
    real = fit.ops.attention
    monkeypatch.setattr(fit.ops, "attention", lambda *a, **k: calls.append(k["backend"]) or real(*a, **k))
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(outputs_and_grad(ours, x), outputs_and_grad(ref, x)):
        if b is not None:
            assert rel_err(a, b) <= 1e-5
    assert calls == ["auto", "auto"]   # once per layer
    assert fastvit.resolve_backend("auto", x.device) == "triton"   # under the interpreter: the kernels ran


def test_set_attn_implementation_on_an_existing_model():
    ref = hf_model("vit")
    ours = hf_model("vit")
    ours.load_state_dict(ref.state_dict())
    ours.set_attn_implementation("fastvit")
    assert ours.config._attn_implementation == "fastvit"
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(ours(x).last_hidden_state, ref(x).last_hidden_state) <= 1e-5


def _qkv(n=17):
    return [torch.randn(2, 2, n, 16) for _ in range(3)]


@pytest.mark.parametrize("case", ["mask", "causal"])
def test_mask_and_causal_fall_back_to_sdpa_with_one_warning(case, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    monkeypatch.setattr(fit, "_warned", set())
    q, k, v = _qkv()
    module = torch.nn.Module()
    module.is_causal = False
    kw = dict(scaling=0.3)
    mask = torch.randn(2, 1, 17, 17) if case == "mask" else None
    if case == "causal":
        kw["is_causal"] = True
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, **kw)
    with pytest.warns(UserWarning, match="not supported by fastvit's attention kernels"):
        got, w = fit.fastvit_attention_forward(module, q, k, v, mask, **kw)
    assert w is None and torch.equal(got, expected)
    plain, _ = fit.fastvit_attention_forward(module, q, k, v, None, scaling=0.3)
    assert rel_err(got, plain) > 1e-3   # the fallback computed something the unmasked call does not
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the second call is silent
        fit.fastvit_attention_forward(module, q, k, v, mask, **kw)


def test_output_attentions_runs_eager_and_returns_full_weights(monkeypatch):
    monkeypatch.setattr(fit, "_warned", set())
    ref = hf_model("vit", attn="eager")
    ours = hf_model("vit", attn="fastvit")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match="output_attentions=True"):
        got = ours(x, output_attentions=True)
    expected = ref(x, output_attentions=True)
    assert len(got.attentions) == 2 and got.attentions[0].shape == (2, 2, 17, 17)
    for a, b in zip(got.attentions, expected.attentions):
        assert rel_err(a, b) <= 1e-6
    assert rel_err(got.last_hidden_state, expected.last_hidden_state) <= 1e-5


def test_softcap_is_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="softcap"):
        fit.fastvit_attention_forward(torch.nn.Module(), q, k, v, None, softcap=30.0)


def test_torch_compile_fullgraph():
    ref = hf_model("siglip")
    ours = hf_model("siglip", attn="fastvit")
    ours.load_state_dict(ref.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, expected = compiled(pixel_values=x), ref(pixel_values=x)
    assert rel_err(got.pooler_output, expected.pooler_output) <= 1e-5
    assert rel_err(got.last_hidden_state, expected.last_hidden_state) <= 1e-5
