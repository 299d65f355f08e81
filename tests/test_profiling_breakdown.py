"""``--peak-breakdown``: what is alive at the measured peak, by module path and op, split into
parameter gradients, saved activations and transients; checked on a tiny model against an
independent tracker run and against tensors whose size and origin are known."""
from __future__ import annotations

import json

import torch

from fastvit import FastViT
from fastvit.cli import main
from fastvit.profiling.breakdown import CATEGORIES
from fastvit.profiling.memory import measure_model
from fastvit.profiling.tracker import LiveTensorTracker

# 64 px, 4 px patches: 257 tokens, so one (1, 2, 257, 257) fp32 attention matrix (528,392 B) is
# the largest tensor by far (the whole model has ~10 KB of parameters)
CFG = dict(img_size=64, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5)


def _model():
    torch.manual_seed(0)
    return FastViT(**CFG, backend="eager")


def _plain_peak(model, training):
    x = torch.randn(1, 3, 64, 64)
    model.train(training)
    with LiveTensorTracker() as t:
        if training:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    for p in model.parameters():
        p.grad = None
    return t.peak_bytes


def test_training_groups_sum_to_the_peak_and_name_the_attention_matrix():
    model = _model()
    row = measure_model(model, 64, backend="eager", mode="training", peak_breakdown=True)
    b = row["breakdown"]
    assert b["total_bytes"] == b["peak_bytes"] == row["peak_bytes"] == _plain_peak(model, True)
    assert sum(g["bytes"] for g in b["groups"]) == row["peak_bytes"]
    assert sum(b["by_category"].values()) == row["peak_bytes"] and set(b["by_category"]) == set(CATEGORIES)
    top = b["groups"][0]
    assert top["bytes"] == 2 * 257 * 257 * 4 and top["shape"] == [1, 2, 257, 257] and top["op"] == "aten._softmax"
    assert top["category"] == "saved activation" and top["where"] in ("blocks.0.attn", "blocks.1.attn")
    # the peak is in the backward: gradients of the softmax are in flight, some weight gradients exist
    assert any(g["category"] == "transient" and g["where"].startswith("backward of blocks.") for g in b["groups"])
    # each gradient storage is one parameter's size (its shape as made may be e.g. (1, D) for a (D,) bias)
    sizes = {p.numel() * 4 for p in model.parameters()}
    grads = [g for g in b["groups"] if g["category"] == "parameter gradient"]
    assert grads and all(g["bytes"] // g["count"] in sizes for g in grads)
    assert all(p.grad is None for p in model.parameters())  # measured and left as it was


def test_inference_is_all_transient_and_sums_to_the_peak():
    model = _model()
    row = measure_model(model, 64, backend="sdpa", mode="inference", peak_breakdown=True)
    b = row["breakdown"]
    assert b["total_bytes"] == row["peak_bytes"] == _plain_peak(model.set_backend("sdpa"), False)
    assert b["by_category"]["transient"] == row["peak_bytes"]
    assert all(g["where"].startswith(("blocks.", "FastViT", "patch_embed", "norm", "head")) for g in b["groups"])


def test_cli_peak_breakdown_json_and_text(capsys):
    argv = ["memory", "--model", "vit_tiny_patch16_224", "--scope", "model", "--depth", "1", "--resolutions", "32",
            "--backends", "eager", "--modes", "training", "--peak-breakdown", "--no-progress"]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    b = rows[0]["breakdown"]
    assert b["total_bytes"] == rows[0]["peak_bytes"] and b["source"] == "measured" and b["classified"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "peak breakdown (measured)" in out and "parameter gradient" in out
