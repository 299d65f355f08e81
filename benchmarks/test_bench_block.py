"""One pre-norm transformer block: fastvit.layers.Block.

Cases, skips and labels: benchmarks/conftest.py.
"""
OP = "block"


def test_block(bench_case):
    bench_case()
