"""The GPU-only branches of the profiling code, run on a CPU with ``torch.cuda`` replaced by fakes
that record every call: CUDA peak-memory measurement, CUDA-event timing, the interleaved
comparison on CUDA, ``do_bench``, the device checks and the CUDA plan. Each test asserts which
calls were made, in which order, and which numbers were chosen from them.

What cannot be simulated here, and so is left to ``benchmarks/gpu_acceptance.sh`` on a GPU:
allocating tensors on a CUDA device (every real case builds its inputs there, so
``measure_attention``/``build_case`` with ``device="cuda"`` are not run end to end), the
asynchrony that makes synchronisation necessary, and ``triton.testing.do_bench``'s own L2 flush.
"""
from __future__ import annotations

import pytest
import torch

from fastvit.profiling import defaults, plan, speed, speed_cases, timing
from fastvit.profiling.tracker import measure_peak


class FakeCuda:
    """A CUDA runtime in miniature: an allocator (allocated / peak bytes), a clock in ms that the
    timed functions advance, events that stamp it, and a log of every call."""

    def __init__(self):
        self.calls: list[str] = []
        self.allocated = 0
        self.peak = 0
        self.clock_ms = 0.0

    # allocator
    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes

    def install(self, monkeypatch, capability=(8, 0)) -> "FakeCuda":
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing, "a timing event must be created with enable_timing=True"
                self.t = None

            def record(self):
                fake.calls.append("Event.record")
                self.t = fake.clock_ms

            def elapsed_time(self, end):
                fake.calls.append("Event.elapsed_time")
                return end.t - self.t

        def log(name, result=None):
            def f(*args, **kwargs):
                fake.calls.append(name)
                return result() if callable(result) else result
            return f

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "synchronize", log("synchronize"))
        monkeypatch.setattr(torch.cuda, "empty_cache", log("empty_cache"))
        monkeypatch.setattr(torch.cuda, "memory_allocated", log("memory_allocated", lambda: fake.allocated))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", log("max_memory_allocated", lambda: fake.peak))

        def reset_peak(device=None):
            fake.calls.append("reset_peak_memory_stats")
            fake.peak = fake.allocated
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peak)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        return self


@pytest.fixture
def cuda(monkeypatch):
    # On a GPU the interpreter is off; with it on, the code refuses CUDA timing (tested apart).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return FakeCuda().install(monkeypatch)


# -- memory -----------------------------------------------------------------------------------------
def test_measure_peak_on_cuda_uses_the_allocator_statistics(cuda):
    cuda.alloc(10_000)  # parameters and inputs: the baseline, not counted

    def step():
        cuda.calls.append("fn")
        cuda.alloc(3_000)   # a temporary ...
        cuda.alloc(500)     # ... and the output
        cuda.free(3_000)    # the temporary dies: the peak stays

    m = measure_peak(step, device="cuda")
    assert m.peak_bytes == 3_500 and m.end_bytes == 500
    assert m.method == "torch.cuda.max_memory_allocated"
    # queued work finished before reading the baseline and after the call; the peak statistic
    # is reset after the baseline is read and before the call
    assert cuda.calls == ["synchronize", "memory_allocated", "reset_peak_memory_stats", "fn", "synchronize",
                          "max_memory_allocated", "memory_allocated"]


def test_measure_peak_picks_cuda_from_the_first_tensor_argument(cuda, monkeypatch):
    # a tensor that only says it lives on CUDA: the device is taken from it, not from an argument
    class OnCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda")

    x = torch.empty(0).as_subclass(OnCuda)
    measure_peak(lambda t: cuda.alloc(64), x, baseline=())
    assert "reset_peak_memory_stats" in cuda.calls and "max_memory_allocated" in cuda.calls


def test_memory_warm_up_runs_once_unmeasured_on_cuda(cuda):
    from fastvit.profiling.memory import _warm_up

    runs = []
    _warm_up(lambda: runs.append(cuda.calls.append("fn")), torch.device("cuda"), "triton")
    assert len(runs) == 1 and cuda.calls == ["fn", "synchronize"]
    _warm_up(lambda: runs.append(1), torch.device("cpu"), "triton")
    assert len(runs) == 1  # nothing once-only to warm on a CPU


# -- timing -----------------------------------------------------------------------------------------
def _ticking(cuda, ms, name):
    def fn():
        cuda.calls.append(name)
        cuda.clock_ms += ms
    return fn


def test_time_interleaved_on_cuda_reads_events_and_alternates(cuda):
    t = timing.time_interleaved({"a": _ticking(cuda, 2.0, "a"), "b": _ticking(cuda, 5.0, "b")}, "cuda", reps=3,
                                warmup=1)
    assert t["a"].method == t["b"].method == "CUDA events"
    assert t["a"].median_s == pytest.approx(0.002) and t["b"].median_s == pytest.approx(0.005)
    assert t["a"].reps == t["b"].reps == 3
    timed = [c for c in cuda.calls if c in ("a", "b")]
    assert timed == ["a", "b"] * 4  # one warm-up round, then three interleaved rounds
    # every timed call sits between two event records, with the device synchronised before it
    rounds = cuda.calls[cuda.calls.index("b") + 1:]
    for i, c in enumerate(rounds):
        if c in ("a", "b"):
            assert rounds[i - 1] == "Event.record" and rounds[i + 1] == "Event.record"
            assert rounds[i - 2] == "synchronize"
    assert cuda.calls.count("Event.elapsed_time") == 6


def test_synchronized_wrapper_waits_on_cuda_only(cuda):
    fn = _ticking(cuda, 1.0, "fn")
    speed.synchronized(fn, "cuda")()
    assert cuda.calls == ["fn", "synchronize"]
    assert speed.synchronized(fn, "cpu") is fn


def test_compare_on_cuda_times_with_events_and_divides_medians(cuda, monkeypatch):
    """The comparison on a GPU, with the case builder replaced: eager takes 6 ms, sdpa 3 ms,
    triton 2 ms of (fake) GPU time per call; the speed-ups must be 2x and 3x."""
    per_call = {"eager": 6.0, "sdpa": 3.0, "triton": 2.0}
    built = []

    def fake_case(op, backend, mode, size, **kw):
        built.append((backend, kw["device"].type))
        return speed_cases.SpeedCase(op=op, backend=backend, mode=mode, img_size=size, tokens=5, batch=1,
                                     dtype=torch.bfloat16, device=kw["device"],
                                     fn=_ticking(cuda, per_call[backend], backend), flops=10**9)

    monkeypatch.setattr(speed, "build_case", fake_case)
    rows = speed.compare(["attention"], [32], ["eager", "sdpa", "triton"], ["fwd"], model="vit_tiny_patch16_224",
                         dtype="bf16", device="cuda", reps=4)
    by = {r["backend"]: r for r in rows}
    assert built == [("eager", "cuda"), ("sdpa", "cuda"), ("triton", "cuda")]
    assert all(r["available"] and r["timer"] == "CUDA events" and r["reps"] == 4 for r in rows)
    assert by["eager"]["median_ms"] == pytest.approx(6.0) and by["triton"]["median_ms"] == pytest.approx(2.0)
    assert by["sdpa"]["speedup_vs_eager"] == pytest.approx(2.0)
    assert by["triton"]["speedup_vs_eager"] == pytest.approx(3.0)
    assert by["triton"]["tflops"] == pytest.approx(1e9 / 2e-3 / 1e12)
    assert "empty_cache" in cuda.calls  # memory released between groups


def test_do_bench_median_on_cuda(cuda, monkeypatch):
    import triton.testing

    seen = {}

    def fake_do_bench(fn, **kwargs):
        seen.update(kwargs)
        fn()
        return 1.25

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    ran = []
    assert speed.do_bench_median_ms(lambda: ran.append(1)) == 1.25
    assert seen == {"return_mode": "median"} and ran == [1]


def test_do_bench_is_not_used_under_the_interpreter(cuda, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert speed.do_bench_median_ms(lambda: None) is None


# -- which backends may be timed on CUDA ------------------------------------------------------------
def test_backend_unavailable_on_cuda(cuda, monkeypatch):
    assert speed.backend_unavailable("triton", "cuda") is None
    assert speed.backend_unavailable("compile", "cuda") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert speed.backend_unavailable("triton", "cuda") == "needs CUDA compute capability >= 8.0"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET" in speed.backend_unavailable("triton", "cuda")
    assert "TRITON_INTERPRET" in speed.backend_unavailable("compile", "cuda")


def test_memory_triton_reason_on_cuda(cuda, monkeypatch):
    from fastvit.profiling.memory import triton_unavailable

    assert triton_unavailable("cuda") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert triton_unavailable("cuda") == "needs CUDA compute capability >= 8.0"


# -- the CUDA plan and defaults -------------------------------------------------------------------
def test_defaults_choose_cuda_and_bf16(cuda):
    assert defaults.default_device() == "cuda"
    assert defaults.default_dtype("cuda:0") == "bf16" and defaults.default_dtype("cpu") == "fp32"
    assert defaults.default_memory_backends("cuda") == ("eager", "sdpa", "triton")
    assert defaults.bench_resolutions("cuda") == defaults.BENCH_RESOLUTIONS["cuda"]


def test_cuda_plan_runs_everything_but_the_model_at_the_largest_size(cuda):
    p = plan.make_plan("vit_base_patch16_224")
    assert p.device == "cuda" and p.dtype == "bf16"
    assert p.resolutions == list(defaults.DEFAULT_RESOLUTIONS)
    assert p.triton_memory_resolutions == p.resolutions  # no interpreter limit on a GPU
    assert p.memory_backends == ["eager", "sdpa", "triton"]
    assert p.speed_backends == list(speed.SPEED_BACKENDS) and p.compile_ops == list(speed.OPS)
    small, large = p.resolutions[0], p.resolutions[-1]
    assert p.speed_groups == [
        {"resolutions": [small, large], "modes": ["fwd", "fwdbwd"], "ops": ["attention", "layer_norm", "mlp", "block"]},
        {"resolutions": [small], "modes": ["fwd", "fwdbwd"], "ops": ["model"]}]
    assert not any("CPU run" in n for n in p.notes)


def test_cli_device_checks_with_one_fake_gpu(cuda):
    import argparse

    from fastvit import _cli_args

    assert _cli_args.device("cuda") == "cuda" and _cli_args.device("cuda:0") == "cuda:0"
    with pytest.raises(argparse.ArgumentTypeError, match="only 1 CUDA device"):
        _cli_args.device("cuda:1")


def test_environment_names_the_gpu(cuda, monkeypatch):
    from fastvit.profiling.run import environment

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    env = environment("cuda")
    assert env["device_name"] == "Fake GPU 80GB" and env["cuda"] == torch.version.cuda


def test_cpu_plan_times_on_one_thread_unless_asked():
    p = plan.make_plan("vit_base_patch16_224", device="cpu")
    assert p.speed_threads == defaults.CPU_TIMING_THREADS == 1
    assert any("timed on 1 torch thread" in n for n in p.notes)
    p = plan.make_plan("vit_base_patch16_224", device="cpu", threads=2)
    assert p.speed_threads == 2 and not any("torch thread" in n for n in p.notes)


def test_cuda_plan_leaves_threads_alone(cuda):
    assert plan.make_plan("vit_base_patch16_224", device="cuda").speed_threads is None
