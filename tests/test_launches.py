"""The launch counts README.md states per inference block, for every backend, checked against the
launch counter (Triton launches + PyTorch compute ops) on the block as the model runs it."""
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from fastvit.profiling.launches import block_launches, count_launches

README = Path(__file__).resolve().parents[1] / "README.md"

# What each backend's block launches, op by op: the README's parenthesised breakdown, spelled as
# the counter names the ops.
EXPECTED = {
    # 2 LayerNorm, 4 GEMM, 4 copies for the batched matmuls, 2 bmm, scale, softmax, GELU, 2 adds
    "eager": ({}, {"native_layer_norm": 2, "addmm": 4, "clone": 4, "bmm": 2, "mul": 1, "_softmax": 1, "gelu": 1,
                   "add": 2}),
    # 2 LayerNorm, 4 GEMM, fused attention, GELU, 2 adds
    "sdpa": ({}, {"native_layer_norm": 2, "addmm": 4, "_scaled_dot_product_flash_attention_for_cpu": 1, "gelu": 1,
                  "add": 2}),
    # add+LayerNorm x2, qkv / proj / fc2 GEMMs, attention, fc1+bias+GELU
    "triton": ({"_layer_norm_fwd": 2, "_attn_fwd": 1, "_linear_gelu_fwd": 1}, {"addmm": 3}),
}


def readme_launch_table() -> dict[str, int]:
    text = README.read_text()
    start = text.index("<!-- launches -->")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        m = re.match(r"\|\s*(eager|sdpa|triton)\s*\|\s*(\d+)\b", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    return rows


def test_readme_lists_every_backend():
    assert set(readme_launch_table()) == {"eager", "sdpa", "triton"}


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
def test_readme_launch_count(backend):
    c = block_launches(backend, "vit_tiny_patch16_224")
    assert c.total == readme_launch_table()[backend], c.to_dict()
    triton, aten = EXPECTED[backend]
    assert dict(c.triton) == triton, c.to_dict()
    assert dict(c.torch) == aten, c.to_dict()


def test_counter_counts_compute_and_ignores_views():
    x = torch.randn(4, 8)
    with count_launches() as c:
        y = x.t().contiguous()  # a view (no launch), then one copy
        z = (y * 2).sum()       # two kernels
        z.view(1)               # a view
    assert c.torch == Counter({"clone": 1, "mul": 1, "sum": 1}) and not c.triton
