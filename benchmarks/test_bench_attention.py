"""Attention alone: fastvit.ops.attention on q, k, v (B, H, N, D) with the model's heads and head_dim.

Cases, skips and labels: benchmarks/conftest.py.
"""
OP = "attention"


def test_attention(bench_case):
    bench_case()
