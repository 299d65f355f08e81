"""Where the Triton kernels launch (fastvit.backend.explain / resolve_backend) and which
architecture family's configurations the autotuner prunes to (kernels._configs.device_family),
with torch.cuda and torch.version.hip simulated: every current GPU without one.

ROCm builds of PyTorch report the GPU through ``torch.cuda`` with ``torch.version.hip`` set, and
the architecture as ``gcnArchName``, the LLVM target with its feature flags
("gfx942:sramecc+:xnack-").
"""
from __future__ import annotations

import types

import pytest
import torch

from fastvit import backend
from fastvit.kernels import _configs


@pytest.fixture
def gpu(monkeypatch):
    """Set the simulated device: ``gpu(capability=(9, 0))`` or ``gpu(hip="gfx942:sramecc+:xnack-")``."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def set_device(capability=None, hip=None):
        monkeypatch.setattr(torch.version, "hip", "6.4.0" if hip else None)
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda d=None: capability if capability else (9, 4))  # ROCm reports gfx942 as 9.4
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda d=None: types.SimpleNamespace(gcnArchName=hip or "", name="simulated"))
    return set_device


@pytest.mark.parametrize("capability, family", [((8, 0), "nvidia"), ((8, 6), "nvidia"), ((8, 9), "nvidia"),
                                                ((9, 0), "nvidia"), ((10, 0), "blackwell"), ((12, 0), "blackwell")])
def test_cuda_8_and_newer_run_triton(gpu, capability, family):
    gpu(capability=capability)
    assert backend.explain("cuda:0") is None
    assert backend.resolve_backend("auto", "cuda:0") == "triton"
    assert _configs.device_family("cuda:0") == family


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_older_cuda_falls_back_to_sdpa_with_the_reason(gpu, capability):
    gpu(capability=capability)
    reason = backend.explain("cuda:0")
    assert f"{capability[0]}.{capability[1]}" in reason and "8.0" in reason
    assert backend.resolve_backend("auto", "cuda:0") == "sdpa"
    with pytest.raises(RuntimeError, match="cannot run here"):
        backend.resolve_backend("triton", "cuda:0")


@pytest.mark.parametrize("arch", ["gfx90a:sramecc+:xnack-", "gfx942:sramecc+:xnack-", "gfx950", "gfx942"])
def test_amd_instinct_runs_triton_with_the_amd_configurations(gpu, arch):
    gpu(hip=arch)
    assert backend.explain("cuda:0") is None
    assert backend.resolve_backend("auto", "cuda:0") == "triton"
    assert _configs.device_family("cuda:0") == "amd"
    # The prune filter keeps the AMD list there (wavefront 64, with the hip compile hints).
    named = {"Q": types.SimpleNamespace(dtype=torch.float16, device=torch.device("cuda:0")),
             "BLOCK_D": 64, "D1": 16, "D2": 0, "DROPOUT": False}
    kept = _configs.prune_attention_fwd_configs(_configs.ATTENTION_CONFIGS["fwd"], named)
    assert kept and all(c.kwargs.get("matrix_instr_nonkdim") == 16 for c in kept)


@pytest.mark.parametrize("arch", ["gfx1100", "gfx908", "gfx1201:xnack-"])
def test_other_amd_gpus_fall_back_to_sdpa_with_the_reason(gpu, arch):
    gpu(hip=arch)
    reason = backend.explain("cuda:0")
    assert reason is not None and arch.split(":")[0] in reason and "gfx942" in reason
    assert backend.resolve_backend("auto", "cuda:0") == "sdpa"
