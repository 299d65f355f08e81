"""The model of what training keeps per token per block (fastvit.profiling.activations) equals
what autograd saves, measured by storage on a real forward, on every backend; and the triton
backend keeps less than sdpa by exactly the GELU output."""
import pytest
import torch

import fastvit
from fastvit.profiling.activations import measure_saved_per_block, saved_bytes_per_token

CONFIGS = [  # (FastViT kwargs, image size, batch)
    (dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=2, num_classes=10), 64, 2),
    (dict(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_classes=0), 80, 1),
]


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_model_equals_what_autograd_saves(backend, case):
    cfg, size, batch = CONFIGS[case]
    torch.manual_seed(0)
    model = fastvit.FastViT(backend=backend, **cfg).train()
    x = torch.randn(batch, 3, size, size)
    tokens = (size // cfg["patch_size"]) ** 2 + 1
    hidden = int(cfg["embed_dim"] * cfg.get("mlp_ratio", 4.0))
    per_token = saved_bytes_per_token(backend, width=cfg["embed_dim"], hidden=hidden, heads=cfg["num_heads"],
                                      tokens=tokens, dtype_bytes=4)["total"]
    assert measure_saved_per_block(model, x) == [per_token * batch * tokens] * cfg["depth"]


def test_triton_keeps_less_than_sdpa_by_the_gelu_output():
    kw = dict(width=768, hidden=3072, heads=12, tokens=4097, dtype_bytes=2)
    sdpa, triton = saved_bytes_per_token("sdpa", **kw), saved_bytes_per_token("triton", **kw)
    assert sdpa["total"] - triton["total"] == 3072 * 2 == sdpa["GELU output (fc2 input)"]
    eager = saved_bytes_per_token("eager", **kw)
    assert eager["attention probabilities (H x N)"] == 12 * 4097 * 2


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        saved_bytes_per_token("flash", width=8, hidden=32, heads=1, tokens=5, dtype_bytes=4)


def test_training_section_reports_model_and_measured_parts():
    from fastvit.profiling.training import mlp_backward_bytes, render_training_md, training_section

    sec = training_section("vit_tiny_patch16_224", backends=("sdpa", "triton"))
    by = {(r["backend"], r["img_size"]): r for r in sec["saved"]}
    assert by[("triton", 224)]["bytes_per_token"] < by[("sdpa", 224)]["bytes_per_token"] < by[("eager", 224)][
        "bytes_per_token"]
    launches = {b["backend"]: b["launches"] for b in sec["backward"]}
    # triton's block backward: both LayerNorms (2 kernels each), attention's three, the MLP's three
    assert launches["triton"]["triton"] == {"_layer_norm_bwd": 2, "_layer_norm_bwd_dwdb": 2, "_attn_bwd_preprocess": 1,
                                            "_attn_bwd_dkdv": 1, "_attn_bwd_dq": 1, "_gelu_linear_dpre": 1,
                                            "_gelu_linear_dw": 1, "_bias_grad_reduce": 1}, launches
    assert not launches["sdpa"]["triton"] and launches["sdpa"]["total"] > 0
    assert mlp_backward_bytes(197, 192, 768, 2, recompute=True) < mlp_backward_bytes(197, 192, 768, 2, recompute=False)
    text = "\n".join(render_training_md(sec))
    assert "**Model**" in text and "**measured**" in text and "RoPE fused into attention (**model**" in text


def test_training_section_says_not_modelled_for_eva_blocks():
    from fastvit.profiling.training import render_training_md, training_section

    sec = training_section("eva02_tiny_patch14_224", backends=("sdpa",))
    assert sec["saved"] == [] and "Eva blocks" in sec["not_modelled"]
    assert sec["backward"][0]["mlp_backward_bytes"] is None and sec["backward"][0]["launches"]["total"] > 0
    assert "Not modelled for eva02_tiny_patch14_224" in "\n".join(render_training_md(sec))
