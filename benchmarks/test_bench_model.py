"""The whole vit_base_patch16_224 at each resolution (built at that image size).

Cases, skips and labels: benchmarks/conftest.py.
"""
OP = "model"


def test_model(bench_case):
    bench_case()
