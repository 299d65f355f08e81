"""The MLP (fc1, GELU, fc2) of one block: fastvit.layers.Mlp.

Cases, skips and labels: benchmarks/conftest.py.
"""
OP = "mlp"


def test_mlp(bench_case):
    bench_case()
