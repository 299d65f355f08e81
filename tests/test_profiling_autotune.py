"""The autotuner picks a profile records: found on real Triton autotuners held by a kernels
module (as an attribute or in a dict of them), each choice once."""
import types

import triton
import triton.language as tl

from fastvit.profiling.autotune import autotune_picks


@triton.jit
def _scale_kernel(X, N: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < N) * 2, mask=offs < N)


def test_picks_are_read_from_the_autotuners_cache():
    configs = [triton.Config({"BLOCK": 16}, num_warps=2), triton.Config({"BLOCK": 32}, num_warps=4)]
    tuner = triton.autotune(configs=configs, key=["N"])(_scale_kernel)
    idle = triton.autotune(configs=configs, key=["N"])(_scale_kernel)  # never ran: no pick
    tuner.cache[(16,)] = configs[0]  # what Autotuner.run stores after benchmarking on a GPU
    tuner.cache[(32,)] = configs[1]
    mod = types.ModuleType("fastvit.kernels._fake")
    mod.tuned, mod.idle, mod.by_name = tuner, idle, {"scale": tuner}  # the dict entry is the same tuner
    picks = autotune_picks({"fastvit.kernels._fake": mod})
    assert [(p["kernel"], p["key"]) for p in picks] == [("_scale_kernel", [16]), ("_scale_kernel", [32])]
    assert picks[0]["module"] == "fastvit.kernels._fake"
    assert picks[0]["config"]["BLOCK"] == 16 and picks[0]["config"]["num_warps"] == 2
    assert picks[1]["config"]["BLOCK"] == 32 and picks[1]["config"]["num_warps"] == 4


def test_no_kernels_module_no_picks():
    assert autotune_picks({}) == []
    assert autotune_picks({"fastvit.kernels.x": types.ModuleType("fastvit.kernels.x")}) == []
