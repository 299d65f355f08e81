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
from fastvit.profiling.flops import (ELEMENTWISE_COMPONENTS, ELEMENTWISE_FLOPS_PER_ELEMENT, MATMUL_COMPONENTS,
                                     OPTIONAL_ELEMENTWISE_COMPONENTS, OPTIONAL_MATMUL_COMPONENTS,
                                     attention_share_by_resolution, count_flops, format_attention_share_table,
                                     format_flops_table, vit_shape)

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
    # fc1 (and, where the Mlp runs as one op, fc2) are called from the Mlp itself with their
    # weights, not as modules: the Mlp's own total is both, fc2's module (when called) its part
    mlp_total = sum(sum(ops.values()) for name, ops in counts.items()
                    if name.startswith("FastViT.blocks.") and name.endswith(".mlp") and name.count(".") == 3)
    assert mlp_total == m["fc1"] + m["fc2"]
    assert module_flops("mlp.fc2") in (0, m["fc2"])
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


# -- every registered model: the count read from the model -------------------------------------------
TINY_WIDTH = dict(embed_dim=32, num_heads=2)  # head_dim 16: valid for every option (rope needs a multiple of 4)


def _module_total(counts, name):
    return sum(counts.get(name, {}).values())


@pytest.mark.parametrize("size_index", [0, 1])
@pytest.mark.parametrize("name", fastvit.list_models())
def test_every_registered_model_matches_flop_counter_mode(name, size_index):
    """Every registered architecture (registers, CLIP's norm_pre, MAP, layer scale, DeiT's second
    head, EVA-02's SwiGLU / q,v biases / scale_mlp / rope, DINOv3) at depth 2 with tiny widths,
    random weights, eager attention (plain matmuls the counter sees): forward and backward,
    at the native resolution and at a small non-square one."""
    overrides = dict(TINY_WIDTH, depth=2)
    model = fastvit.create_model(name, backend="eager", **overrides)
    ph, pw = model.patch_size
    size, batch = (model.img_size, 1) if size_index == 0 else ((2 * ph, 3 * pw), 2)
    r = count_flops(name, size, batch=batch, **overrides)
    assert count_flops(model, size, batch=batch).to_dict() == {**r.to_dict(), "model": "FastViT"}

    x = torch.randn(batch, 3, *size)
    fc = _flop_counter(model, x)
    assert fc.get_total_flops() == r.flops
    counts, m = fc.get_flop_counts(), r.by_component["matmul"]
    assert _module_total(counts, "FastViT.patch_embed") == m["patch_embed"]
    assert _module_total(counts, "FastViT.attn_pool") == m.get("attn_pool", 0)
    assert ("attn_pool" in m) == (model.attn_pool is not None)
    assert _module_total(counts, "FastViT.head") == m["head"]
    assert _module_total(counts, "FastViT.head_dist") == m.get("head_dist", 0)
    assert ("head_dist" in m) == (model.dist_token is not None)
    blocks = sum(_module_total(counts, f"FastViT.blocks.{i}") for i in range(len(model.blocks)))
    assert blocks == sum(m[k] for k in ("qkv", "attn_qk", "attn_av", "proj", "fc1", "fc2"))
    attn = sum(sum(v for op, v in ops.items() if "bmm" in str(op)) for n, ops in counts.items()
               if n.startswith("FastViT.blocks.") and n.endswith(".attn") and n.count(".") == 3)
    assert attn == m["attn_qk"] + m["attn_av"]

    assert _flop_counter(model, x, backward=True).get_total_flops() == r.backward_flops


# timm's own modules as the oracle (no one here wrote them), attention unfused so every product
# is counted: full widths, one block, a small image
TIMM_ORACLE = [("eva02_tiny_patch14_224", 56), ("eva02_base_patch14_224", 42), ("vit_small_patch16_dinov3", 64),
               ("vit_small_plus_patch16_dinov3", 48), ("vit_base_patch16_siglip_224", 48),
               ("vit_base_patch14_reg4_dinov2", 42), ("deit_tiny_distilled_patch16_224", 48),
               ("vit_base_patch16_clip_224", 48)]


@pytest.mark.parametrize("name,size", TIMM_ORACLE)
def test_matches_flop_counter_on_timm_models(name, size):
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(name, pretrained=False, depth=1, img_size=size).eval()
    for mod in theirs.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = False
    fc = _flop_counter(theirs, torch.randn(1, 3, size, size))
    r = count_flops({**model_config(name).kwargs(), "img_size": size, "depth": 1})
    assert fc.get_total_flops() == r.flops
    assert sum(p.numel() for p in theirs.parameters()) == r.params


def test_what_the_shape_reads_from_the_model():
    s = vit_shape("vit_base_patch14_reg4_dinov2")
    assert (s.patches, s.num_prefix_tokens, s.tokens, s.pos_embed_tokens) == (1369, 5, 1374, 1369)  # no_embed_class
    assert s.layer_scale and s.blocks[0].qkv_bias == "qkv" and s.norm and not s.fc_norm
    s = vit_shape("vit_base_patch16_siglip_224")
    assert (s.tokens, s.attn_pool.num_heads, s.attn_pool.mlp.hidden) == (196, 12, 3072)
    s = vit_shape("deit_tiny_distilled_patch16_224")
    assert s.tokens == 198 and s.pos_embed_tokens == 198 and s.head_dist
    s = vit_shape("vit_base_patch16_clip_224")
    assert s.norm_pre and not s.patch_bias
    s = vit_shape("eva02_base_patch14_224")
    b = s.blocks[0]
    assert (b.kind, b.qkv_bias, b.rope, b.mlp.kind, b.mlp.norm, b.mlp.hidden) == ("eva", "qv", True, "swiglu", True,
                                                                                  2048)
    assert s.rope == "interleaved" and s.fc_norm and not s.norm
    assert vit_shape("eva02_tiny_patch14_224").blocks[0].mlp.kind == "swiglu_packed"
    s = vit_shape("vit_small_patch16_dinov3", 256)
    assert (s.tokens, s.pos_embed_tokens, s.rotated_tokens, s.rope) == (261, 0, 256, "half")
    assert s.blocks[0].qkv_bias == "none" and s.layer_scale
    s = vit_shape("vit_base_patch16_rope_reg1_gap_256")
    assert (s.tokens, s.num_prefix_tokens, s.rope) == (257, 1, "interleaved")
    assert vit_shape({"embed_dim": 64, "num_heads": 2, "qk_norm": True, "depth": 1}).blocks[0].qk_norm


def _ops_run(model, x):
    c = _ElementCounter()
    with torch.no_grad(), c:
        model(x)
    return c.n


def test_elementwise_by_hand_eva02():
    """EVA-02 base's options (split SwiGLU with the norm inside, q/v-only biases, interleaved
    rope, fc_norm after average pooling, learned position embeddings on CLS too) at depth 1:
    every element-wise row from the config, by hand."""
    name, size, B = "eva02_base_patch14_224", 28, 2
    cfg = model_config(name)
    D, H, L = 32, 2, 1
    ov = dict(embed_dim=D, num_heads=H, depth=L)
    P, hd, hidden = (size // cfg.patch_size) ** 2, D // H, int(D * cfg.mlp_ratio)
    N = P + 1  # CLS
    assert (P, N, hidden) == (4, 5, 85)
    ew = count_flops(name, size, batch=B, **ov).by_component["elementwise"]
    ln_elems = L * (2 * B * N * D + B * N * hidden) + B * D  # norm1, norm2, scale_mlp's norm; fc_norm on the pool
    assert ew == {
        "layer_norm": 7 * ln_elems,
        "softmax": 6 * L * B * H * N * N,
        "gelu": 0,  # SwiGLU
        "gating": L * B * N * hidden * (4 + 1),  # SiLU(gate) * value
        "bias": B * P * D + L * B * N * (2 * D + D + 2 * hidden + D),  # patch conv; q, v; proj; fc1_g, fc1_x; fc2
        "residual": 2 * L * B * N * D,
        "pos_embed": B * N * D,
        "pool": B * P * D,
        "rope": L * 3 * 2 * B * H * P * hd,  # q and k of the patch tokens: x cos + partner sin
    }
    assert ew["layer_norm"] == 7 * 1554 and ew["gating"] == 4250 and ew["bias"] == 3236 and ew["rope"] == 1536
    model = fastvit.create_model(name, backend="eager", **ov).eval()
    n = _ops_run(model, torch.randn(B, 3, size, size))
    assert n["native_layer_norm"] == ln_elems and n["_softmax"] == L * B * H * N * N


def test_elementwise_by_hand_dinov3():
    """DINOv3 small's options (CLS + 4 registers, no position embeddings, rotate-half rope on the
    patches only, layer scale, no qkv bias, final norm on every token, average pooling) at depth 1."""
    name, size, B = "vit_small_patch16_dinov3", 32, 2
    cfg = model_config(name)
    D, H, L = 32, 2, 1
    ov = dict(embed_dim=D, num_heads=H, depth=L)
    P, hd, hidden = (size // cfg.patch_size) ** 2, D // H, int(D * cfg.mlp_ratio)
    N = P + 1 + cfg.reg_tokens
    assert (P, N, hidden) == (4, 9, 128)
    r = count_flops(name, size, batch=B, **ov)
    ew = r.by_component["elementwise"]
    assert ew == {
        "layer_norm": 7 * (L * 2 * B * N * D + B * N * D),  # norm1, norm2; the final norm on every token
        "softmax": 6 * L * B * H * N * N,
        "gelu": 5 * L * B * N * hidden,
        "bias": B * P * D + L * B * N * (D + hidden + D),  # patch conv; proj, fc1, fc2 (no qkv bias, no head)
        "residual": 2 * L * B * N * D,
        "pos_embed": 0,
        "pool": B * P * D,
        "rope": L * 3 * 2 * B * H * P * hd,  # the 5 prefix tokens are not rotated
        "layer_scale": 2 * L * B * N * D,
    }
    assert ew["layer_norm"] == 12096 and ew["softmax"] == 1944 and ew["rope"] == 1536 and ew["layer_scale"] == 1152
    assert r.tokens == 9 and r.prefix_tokens == 5 and r.structure["rope"] == "half"
    model = fastvit.create_model(name, backend="eager", **ov).eval()
    n = _ops_run(model, torch.randn(B, 3, size, size))
    assert n["native_layer_norm"] == ew["layer_norm"] // 7 and n["_softmax"] == ew["softmax"] // 6


def test_optional_rows_only_where_the_model_has_the_part():
    plain = count_flops("vit_base_patch16_224").by_component
    assert tuple(plain["matmul"]) == MATMUL_COMPONENTS and tuple(plain["elementwise"]) == ELEMENTWISE_COMPONENTS
    for name, matmul, elementwise in [
            ("vit_base_patch16_siglip_224", {"attn_pool"}, set()),
            ("deit_tiny_distilled_patch16_224", {"head_dist"}, set()),
            ("deit3_small_patch16_224", set(), {"layer_scale"}),
            ("eva02_tiny_patch14_224", set(), {"rope", "gating"}),
            ("vit_small_plus_patch16_dinov3", set(), {"rope", "gating", "layer_scale"})]:
        c = count_flops(name).by_component
        assert set(c["matmul"]) - set(MATMUL_COMPONENTS) == matmul <= set(OPTIONAL_MATMUL_COMPONENTS)
        assert set(c["elementwise"]) - set(ELEMENTWISE_COMPONENTS) == elementwise
        assert elementwise <= set(OPTIONAL_ELEMENTWISE_COMPONENTS)
        assert all(c["elementwise"][k] > 0 for k in elementwise) and all(c["matmul"][k] > 0 for k in matmul)


def test_headline_numbers_of_the_new_families():
    # timm's model cards: eva02_tiny_patch14_224 1.7 GMACs, 5.5 M params; vit_small_patch16_dinov3
    # (at 256 px) 6.3 GMACs, 21.6 M params; vit_base_patch16_dinov3 23.6 GMACs, 85.6 M
    r = count_flops("eva02_tiny_patch14_224")
    assert round(r.timm_macs / 1e9, 1) == 1.7 and round(r.params / 1e6, 1) == 5.5 and r.tokens == 257
    r = count_flops("vit_small_patch16_dinov3", 256)
    assert round(r.timm_macs / 1e9, 1) == 6.3 and round(r.params / 1e6, 1) == 21.6 and r.tokens == 261
    r = count_flops("vit_base_patch16_dinov3", 256)
    assert round(r.timm_macs / 1e9, 1) == 23.6 and round(r.params / 1e6, 1) == 85.6


@pytest.mark.parametrize("name", fastvit.list_models())
def test_cli_flops_runs_for_every_registered_model(name, capsys):
    from fastvit.cli import main

    assert main(["flops", name, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"] == name and d["flops"] == sum(d["by_component"]["matmul"].values())
    assert d["tokens"] == d["patches"] + d["prefix_tokens"] == vit_shape(name).tokens


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "vit_base_patch16_siglip_224"])
def test_cli_flops_text_says_what_it_counted(name, capsys):
    from fastvit.cli import main

    assert main(["flops", name]) == 0
    out = capsys.readouterr().out
    assert "Counted:" in out and ("rope (interleaved)" in out if "eva" in name else "pool MAP" in out)
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert ("attn_pool" in rows) == ("siglip" in name) and ("gating" in rows) == ("eva" in name)
    assert ("196 patches, no prefix token" in out) == ("siglip" in name)


OPTION_CONFIGS = [dict(qk_norm=True, pre_norm=True), dict(global_pool="", fc_norm=True),
                  dict(global_pool="map", class_token=False, reg_tokens=2), dict(fc_norm=True, global_pool="map"),
                  dict(scale_mlp=True, qkv_fused=False, qkv_bias=False),
                  dict(mlp_layer="swiglu", num_classes=0, global_pool="avg"),
                  dict(rope="dinov3", pos_embed="none", class_token=False, global_pool="avg", reg_tokens=3),
                  dict(proj_bias=False, init_values=0.1), dict(dist_token=True, num_classes=0),
                  dict(gelu_approximate="quick")]


@pytest.mark.parametrize("extra", OPTION_CONFIGS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_option_combinations_match_the_counters(extra):
    """Options no registered model combines this way: matmuls against FlopCounterMode (forward,
    backward, a non-square size) and the LayerNorm and softmax element counts against the ops run."""
    cfg = {**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5), **extra}
    model = FastViT(**cfg, backend="eager")
    for size, batch in (((32, 32), 1), ((16, 40), 2)):
        x = torch.randn(batch, 3, *size)
        r = count_flops(cfg, size, batch=batch)
        assert _flop_counter(model, x).get_total_flops() == r.flops
        assert _flop_counter(model, x, backward=True).get_total_flops() == r.backward_flops
        n = _ops_run(model.eval(), x)
        model.train()
        ew = r.by_component["elementwise"]
        assert 7 * n["native_layer_norm"] == ew["layer_norm"] and 6 * n["_softmax"] == ew["softmax"]
