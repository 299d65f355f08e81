"""LayerNorm over the model's width on (B, N, D) tokens: fastvit.ops.layer_norm.

Cases, skips and labels: benchmarks/conftest.py.
"""
OP = "layer_norm"


def test_layer_norm(bench_case):
    bench_case()
