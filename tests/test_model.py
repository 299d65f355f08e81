"""FastViT in plain PyTorch: variants, parameter counts, backends, shapes and bad input."""
import pytest
import torch

import fastvit
from fastvit import FastViT, count_params, create_model, list_models, model_config
from tests._tolerances import rel_err

EXPECTED_MODELS = {
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch32_224",
    "vit_base_patch8_224", "vit_large_patch16_224", "vit_large_patch14_224", "vit_huge_patch14_224",
    "vit_cifar_small", "vit_cifar_base", "vit_cifar_large",
}


def test_registry_lists_the_issue_variants():
    assert EXPECTED_MODELS <= set(list_models())
    assert model_config("vit_huge_patch14_224").embed_dim // model_config("vit_huge_patch14_224").num_heads == 80


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_param_count_matches_formula_and_timm(name):
    timm = pytest.importorskip("timm")
    cfg = model_config(name)
    with torch.device("meta"):
        ours = create_model(name)
        theirs = timm.models.vision_transformer.VisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, num_classes=cfg.num_classes, mlp_ratio=cfg.mlp_ratio)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_timm = sum(p.numel() for p in theirs.parameters())
    assert n_ours == count_params(**cfg.kwargs()) == n_timm


def test_seed_cifar_counts_are_not_the_seed_figures():
    # The seed says "~2.7M" for the 192-wide, 12-deep CIFAR model; its own dimensions give ~5.4M.
    n = count_params(**model_config("vit_cifar_small").kwargs())
    assert 5.3e6 < n < 5.5e6


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_every_model_runs_a_forward_pass(name):
    cfg = model_config(name)
    # Large and huge keep their width, heads and patch size but run 2 blocks: initialising and
    # running 24-32 of them on a 2-core CI box costs a minute and tests nothing more.
    overrides = {"depth": 2} if cfg.embed_dim >= 1024 else {}
    model = create_model(name, backend="sdpa", **overrides).eval()
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, cfg.num_classes)
    assert torch.isfinite(out).all()


def small_model(**kw):
    base = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=7)
    base.update(kw)
    return FastViT(**base)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_eager_and_sdpa_agree(global_pool):
    model = small_model(global_pool=global_pool).eval()
    x = torch.randn(3, 3, 32, 40, requires_grad=True)
    model.set_backend("eager")
    y_eager = model(x)
    (g_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    model.set_backend("sdpa")
    y_sdpa = model(x)
    (g_sdpa,) = torch.autograd.grad(y_sdpa.square().sum(), x)
    assert rel_err(y_sdpa, y_eager) <= 1e-5
    assert rel_err(g_sdpa, g_eager) <= 1e-5


def test_float64_reference_agrees_with_fp32():
    model = small_model(backend="eager").eval()
    x = torch.randn(2, 3, 32, 32)
    y32 = model(x)
    y64 = model.double()(x.double())
    assert rel_err(y32, y64) <= 1e-5


def test_forward_features_and_head_shapes():
    model = small_model(backend="sdpa").eval()
    x = torch.randn(2, 3, 32, 48)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 4 * 6, 48)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 48)
    assert model.forward_head(feats).shape == (2, 7)


def test_init_follows_the_seeds():
    torch.manual_seed(0)
    model = create_model("vit_small_patch16_224")
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02 * 0.88) < 2e-3  # a normal truncated at 2 std has std 0.88 sigma
    assert qkv.weight.abs().max().item() <= 0.04 + 1e-6
    assert torch.count_nonzero(qkv.bias) == 0
    assert torch.all(model.norm.weight == 1) and torch.count_nonzero(model.norm.bias) == 0
    assert model.cls_token.abs().max().item() <= 0.04 + 1e-6 and model.cls_token.std() > 0
    conv = model.patch_embed.proj.weight
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert abs(conv.std().item() - (2.0 / fan_out) ** 0.5) < 0.1 * (2.0 / fan_out) ** 0.5


def test_training_mode_dropouts_change_output_and_eval_is_deterministic():
    model = small_model(drop_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1, drop_path_rate=0.2, backend="eager")
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_grad_checkpointing_gives_the_same_gradients():
    model = small_model(backend="eager")
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) <= 1e-6, n


@pytest.mark.parametrize("bad, err, words", [
    (torch.randn(3, 32, 32), ValueError, "4-D"),
    (torch.randn(1, 4, 32, 32), ValueError, "channels"),
    (torch.randn(1, 3, 30, 32), ValueError, "multiples of the patch size"),
    (torch.randint(0, 255, (1, 3, 32, 32)), TypeError, "floating"),
    ("an image", TypeError, "torch.Tensor"),
])
def test_bad_input_is_named(bad, err, words):
    model = small_model(backend="sdpa")
    with pytest.raises(err, match=words):
        model(bad)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        create_model("vit_base_patch16_244")


@pytest.mark.parametrize("kw, words", [
    (dict(backend="cuda"), "backend must be one of"),
    (dict(embed_dim=50, num_heads=3), "divisible by num_heads"),
    (dict(img_size=30), "multiples of the patch size"),
    (dict(global_pool="max"), "global_pool"),
    (dict(drop_path_rate=1.5), "drop_path_rate"),
])
def test_bad_config_is_named(kw, words):
    with pytest.raises(ValueError, match=words):
        small_model(**kw)


def test_backend_env_var_and_triton_errors(monkeypatch):
    from fastvit.backend import resolve_backend
    monkeypatch.setenv("FASTVIT_BACKEND", "eager")
    assert resolve_backend("auto", "cpu") == "eager"
    monkeypatch.setenv("FASTVIT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTVIT_BACKEND"):
        resolve_backend("auto", "cpu")
    monkeypatch.delenv("FASTVIT_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", "cpu") == "sdpa"
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here: tensors on cpu"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", "cpu") == "triton"


def test_public_api_names():
    for name in ("FastViT", "create_model", "list_models", "from_timm", "from_torchvision", "load_checkpoint"):
        assert hasattr(fastvit, name)
    for name in ("attention", "layer_norm", "add_layer_norm", "linear_gelu", "cls_attention"):
        assert callable(getattr(fastvit.ops, name))


def test_readme_model_table_matches_the_formula():
    import pathlib
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    header, _, *rows = text[text.index("<!-- model-table -->"):].split("\n\n")[0].splitlines()[1:]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = [dict(zip(cols, (c.strip() for c in row.strip("|").split("|")))) for row in rows]
    assert {c["model"] for c in cells} == set(list_models())
    for c in cells:
        assert int(c["params"].replace(",", "")) == count_params(**model_config(c["model"]).kwargs()), c["model"]
