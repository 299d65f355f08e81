"""The analytic FLOP count against PyTorch's FlopCounterMode, timm's published GMACs and the
element counts of a real forward pass."""
import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import fastvit
from fastvit import FastViT, model_config
from fastvit.profiling.flops import (ELEMENTWISE_FLOPS_PER_ELEMENT, MATMUL_COMPONENTS, attention_share_by_resolution,
                                     count_flops, format_attention_share_table, format_flops_table, vit_shape)

# timm's published GMACs and parameter counts (M), from huggingface/pytorch-image-models
# results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv (columns infer_gmacs, param_count; the
# same figures appear in the other benchmark-infer-*.csv tables). timm's benchmark.py counts
# them with fvcore: matmul MACs plus 5 per element of each affine LayerNorm.
TIMM_PUBLISHED = [
    # (name at 224 in fastvit, img_size, published GMACs, published params in M or None)
    ("vit_tiny_patch16_224", 224, 1.26, 5.72),
    ("vit_small_patch16_224", 224, 4.61, 22.05),
    ("vit_base_patch16_224", 224, 17.58, 86.57),
    ("vit_base_patch32_224", 224, 4.41, 88.22),
    ("vit_base_patch8_224", 224, 78.22, 86.58),
    ("vit_large_patch16_224", 224, 61.6, 304.33),
    ("vit_large_patch14_224", 224, 81.08, 304.2),
    ("vit_huge_patch14_224", 224, 167.4, None),  # timm's huge default has no classifier: 630.76 M
    ("vit_tiny_patch16_224", 384, 4.7, 5.79),  # timm's vit_*_patch16_384: same model at 384 px
    ("vit_small_patch16_224", 384, 15.52, 22.2),
    ("vit_base_patch16_224", 384, 55.54, 86.86),
    ("vit_large_patch16_224", 384, 191.21, 304.72),
]


@pytest.mark.parametrize("name,size,gmacs,params_m", TIMM_PUBLISHED)
def test_timm_published_gmacs(name, size, gmacs, params_m):
    r = count_flops(name, size)
    assert round(r.timm_macs / 1e9, 2) == gmacs
    # the LayerNorm term is what separates our matmul MACs from timm's figure
    n_ln = (2 * r_depth(name) + 1) * r.tokens * model_config(name).embed_dim
    assert r.timm_macs - r.macs == 5 * n_ln
    if params_m is not None:
        native = count_flops({**model_config(name).kwargs(), "img_size": size})  # pos_embed for that size
        assert round(native.params / 1e6, 2) == params_m


def r_depth(name):
    return model_config(name).depth


def test_headline_vit_b16_numbers():
    r = count_flops("vit_base_patch16_224")
    assert r.tokens == 197 and r.patches == 196
    assert r.flops == 2 * r.macs == sum(r.by_component["matmul"].values())
    assert r.macs == 17_563_828_224  # 12 x (qkv + QK^T + AV + proj + fc1 + fc2) + patch embedding + head
    assert r.by_component["matmul"]["attn_qk"] == 2 * 12 * 197 * 197 * 768


def _flop_counter(model, x, backward=False):
    fc = FlopCounterMode(display=False)
    if backward:
        y = model(x)
        with fc:
            y.backward(torch.randn_like(y))
    else:
        with fc:
            model(x)
    return fc


CONFIGS = [
    dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=7),
    dict(img_size=(24, 40), patch_size=(8, 4), embed_dim=32, depth=1, num_heads=2, num_classes=0, qkv_bias=False,
         mlp_ratio=2.0, global_pool="avg"),
    dict(img_size=16, patch_size=4, in_chans=1, embed_dim=40, depth=3, num_heads=5, num_classes=3,
         gelu_approximate="tanh"),
]


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("size_index", [0, 1])
def test_matches_flop_counter_mode_exactly(cfg, size_index):
    cfg = CONFIGS[cfg]
    model = FastViT(**cfg, backend="eager")
    native = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    ph, pw = cfg["patch_size"] if isinstance(cfg["patch_size"], tuple) else (cfg["patch_size"],) * 2
    size = native if size_index == 0 else (native[0] + 2 * ph, native[1] + 3 * pw)  # non-native, non-square
    batch = 1 + size_index
    x = torch.randn(batch, cfg.get("in_chans", 3), *size)
    r = count_flops(model, size, batch=batch)

    fc = _flop_counter(model, x)
    assert fc.get_total_flops() == r.flops
    counts = fc.get_flop_counts()

    def module_flops(suffix):
        return sum(sum(ops.values()) for name, ops in counts.items()
                   if name.startswith("FastViT.blocks.") and name.endswith(suffix) and name.count(".") == 4)

    m = r.by_component["matmul"]
    assert sum(counts["FastViT.patch_embed"].values()) == m["patch_embed"]
    assert module_flops("attn.qkv") == m["qkv"]
    assert module_flops("attn.proj") == m["proj"]
    # fc1 runs inside ops.linear_gelu (bias and GELU fused with it), called from the Mlp itself
    # with fc1's weights: its FLOPs are the Mlp's own, apart from fc2's
    mlp_own = sum(sum(ops.values()) for name, ops in counts.items()
                  if name.startswith("FastViT.blocks.") and name.endswith(".mlp") and name.count(".") == 3)
    assert mlp_own - module_flops("mlp.fc2") == m["fc1"]
    assert module_flops("mlp.fc2") == m["fc2"]
    assert sum(sum(v for op, v in ops.items() if "bmm" in str(op)) for name, ops in counts.items()
               if name.endswith(".attn") and name.count(".") == 3) == m["attn_qk"] + m["attn_av"]
    assert sum(counts.get("FastViT.head", {}).values()) == m["head"]

    assert _flop_counter(model, x, backward=True).get_total_flops() == r.backward_flops


def test_matches_flop_counter_on_timm_vision_transformer():
    """An oracle no one here wrote: timm's model, its attention unfused so every product is counted."""
    timm = pytest.importorskip("timm")
    cfg = model_config("vit_tiny_patch16_224")
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=4,
        num_heads=cfg.num_heads, num_classes=cfg.num_classes).eval()
    for blk in theirs.blocks:
        blk.attn.fused_attn = False
    fc = _flop_counter(theirs, torch.randn(1, 3, 224, 224))
    assert fc.get_total_flops() == count_flops("vit_tiny_patch16_224", depth=4).flops


class _ElementCounter(TorchDispatchMode):
    """Numel of the outputs of the element-wise ops a FastViT forward runs, by kind."""

    def __init__(self):
        super().__init__()
        self.n = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        first = out[0] if isinstance(out, (tuple, list)) else out
        if name in ("native_layer_norm", "_softmax", "gelu", "add", "mul", "addmm", "convolution", "mean"):
            self.n[name] = self.n.get(name, 0) + first.numel()
        return out


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_elementwise_counts_match_the_ops_a_forward_runs(cfg):
    cfg = CONFIGS[cfg]
    model = FastViT(**cfg, backend="eager").eval()
    size = model.img_size
    c = _ElementCounter()
    with torch.no_grad(), c:
        model(torch.randn(2, cfg.get("in_chans", 3), *size))
    ew = count_flops(model, batch=2).by_component["elementwise"]
    per = ELEMENTWISE_FLOPS_PER_ELEMENT
    assert ew["layer_norm"] == per["layer_norm"] * c.n["native_layer_norm"]
    assert ew["softmax"] == per["softmax"] * c.n["_softmax"] == per["softmax"] * c.n["mul"]  # scale, then softmax
    gelu = per["gelu_tanh"] if cfg.get("gelu_approximate") == "tanh" else per["gelu"]
    assert ew["gelu"] == gelu * c.n["gelu"]
    assert ew["residual"] + ew["pos_embed"] == c.n["add"]
    # every Linear with a bias is one addmm; without qkv bias the qkv Linear is an mm
    assert ew["bias"] == c.n["addmm"] + c.n["convolution"]
    if model.global_pool == "avg":  # the mean over the patch tokens reads each of them once
        assert "mean" in c.n and ew["pool"] == per["pool"] * 2 * model.patch_embed.num_patches * model.embed_dim
    else:
        assert "mean" not in c.n and ew["pool"] == 0


def test_inputs_model_name_config_and_dict_agree():
    name = "vit_small_patch16_224"
    cfg = model_config(name)
    with torch.device("meta"):
        model = fastvit.create_model(name)
    reports = [count_flops(name, 320), count_flops(cfg, 320), count_flops(cfg.kwargs(), 320),
               count_flops(model, 320)]
    for r in reports[1:]:
        assert (r.flops, r.elementwise_flops, r.params, r.tokens) == (reports[0].flops, reports[0].elementwise_flops,
                                                                     reports[0].params, reports[0].tokens)
    assert count_flops(name, 224, batch=3).flops == 3 * count_flops(name, 224).flops


def test_attention_share_grows_with_resolution():
    sizes = (224, 384, 512, 768, 1024)
    rows = attention_share_by_resolution("vit_base_patch16_224", sizes)
    assert [r["tokens"] for r in rows] == [197, 577, 1025, 2305, 4097]
    shares = [r["attention_share"] for r in rows]
    assert shares == sorted(shares) and shares[0] < 0.05 and shares[-1] > 0.45
    logs = [(math.log(r["tokens"]), math.log(r["attention_flops"]), math.log(r["linear_flops"])) for r in rows]
    slope = lambda i: (logs[-1][i] - logs[0][i]) / (logs[-1][0] - logs[0][0])  # noqa: E731
    assert slope(1) == pytest.approx(2.0, abs=1e-12)  # Q K^T and A V: O(N^2)
    assert 0.99 < slope(2) < 1.0  # the rest: O(N), the patch embedding and head make it a bit less
    table = format_attention_share_table(rows)
    assert "4097" in table and len(table.splitlines()) == 1 + len(sizes)


def test_report_is_json_ready_and_tabulates():
    r = count_flops("vit_base_patch16_224", 384)
    d = json.loads(json.dumps(r.to_dict()))
    assert {"model", "img_size", "tokens", "params", "flops", "macs", "by_component"} <= set(d)
    assert d["img_size"] == 384 and d["model"] == "vit_base_patch16_224"
    assert set(d["by_component"]["matmul"]) == set(MATMUL_COMPONENTS)
    assert d["total_flops"] == d["flops"] + sum(d["by_component"]["elementwise"].values())
    assert count_flops("vit_base_patch16_224", (224, 384)).to_dict()["img_size"] == [224, 384]
    text = format_flops_table(r)
    for word in MATMUL_COMPONENTS + ("layer_norm", "softmax", "2 x MACs"):
        assert word in text


@pytest.mark.parametrize("call,match", [
    (lambda: count_flops("vit_base_patch16_224", 230), "img_size"),
    (lambda: count_flops("vit_base_patch16_224", 0), "img_size"),
    (lambda: count_flops("vit_base_patch16_224", batch=0), "batch"),
    (lambda: count_flops("vit_bsae_patch16_224"), "vit_base_patch16_224"),
    (lambda: count_flops({"embed_dim": 100, "num_heads": 3}), "divisible"),
    (lambda: count_flops({"embd_dim": 100}), "embd_dim"),
    (lambda: vit_shape(FastViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2), depth=2), "overrides"),
])
def test_bad_input_is_refused_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(TypeError, match="model_or_name"):
        count_flops(3.5)
