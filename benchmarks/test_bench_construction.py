"""Construction and conversion time of FastViT beside timm's own construction (issue: first contact).

Recorded, not asserted: each timing is a pytest-benchmark entry (group ``construct-<model>``),
one round each (building ViT-L takes seconds). Under ``--benchmark-disable`` (the test suite)
only ViT-B runs, once, as a smoke test.

    python -m pytest benchmarks/test_bench_construction.py --benchmark-only --benchmark-columns=min,median,max
"""
import pytest
import torch

import fastvit

timm = pytest.importorskip("timm")

MODELS = ("vit_base_patch16_224", "vit_large_patch16_224")


def _cases():
    for name in MODELS:
        for what in ("timm.create_model", "fastvit.create_model", "fastvit.from_timm"):
            yield pytest.param(name, what, id=f"{name}-{what}")


@pytest.mark.parametrize("name, what", list(_cases()))
def test_construction(benchmark, name, what):
    if benchmark.disabled and name != MODELS[0]:
        pytest.skip("ViT-L construction runs only when benchmarking (--benchmark-only)")
    source = timm.create_model(name, pretrained=False) if what == "fastvit.from_timm" else None
    fn = {"timm.create_model": lambda: timm.create_model(name, pretrained=False),
          "fastvit.create_model": lambda: fastvit.create_model(name),
          "fastvit.from_timm": lambda: fastvit.from_timm(source)}[what]
    benchmark.group = f"construct-{name}"
    benchmark.extra_info["params"] = fastvit.count_params(**fastvit.model_config(name).kwargs())
    model = benchmark.pedantic(fn, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert sum(p.numel() for p in model.parameters()) == benchmark.extra_info["params"]
    if source is not None:  # the conversion holds copies of the source's weights
        assert torch.equal(model.pos_embed, source.pos_embed)
        assert model.pos_embed.data_ptr() != source.pos_embed.data_ptr()
