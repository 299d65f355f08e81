"""benchmarks/gpu_acceptance.sh and its summariser, on a CPU: the summary of a synthetic run
(pytest-benchmark JSON, profile results, JUnit XML) and the script's refusal without CUDA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvit.profiling.acceptance import main, speedups, summarise

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_acceptance.sh"

# median seconds per (op, mode, res, backend): triton 2x faster than eager, 1.25x than sdpa,
# 1.5x than compile on attention; on the block only eager and triton were timed
MEDIANS = {
    ("attention", "fwd", 224): {"eager": 0.004, "sdpa": 0.0025, "compile": 0.003, "triton": 0.002},
    ("attention", "fwdbwd", 1024): {"eager": 0.090, "sdpa": 0.050, "compile": 0.060, "triton": 0.040},
    ("block", "fwd", 224): {"eager": 0.010, "triton": 0.008},
    ("layer_norm", "fwd", 224): {"eager": 0.001, "triton": 0.0005},  # not a summary op
}


def bench_json(medians=MEDIANS, target="cuda-bf16") -> dict:
    benchmarks = []
    for (op, mode, res), by in medians.items():
        for backend, median in by.items():
            benchmarks.append({
                "group": f"{op}-{mode}-{res}px-{target}", "name": f"test_{op}[{backend}-{mode}-{res}px-{target}]",
                "params": {"backend": backend, "mode": mode, "res": res, "target": target},
                "stats": {"median": median, "mean": median * 1.01}, "extra_info": {"op": op}})
    return {"machine_info": {}, "commit_info": {}, "benchmarks": benchmarks}


PICKS = [{"kernel": "_attn_fwd", "module": "fastvit.kernels.attention", "key": [256, 256, 64, False, "tf32"],
          "config": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}},
         {"kernel": "_attn_fwd", "module": "fastvit.kernels.attention", "key": [4096, 4096, 64, False, "tf32"],
          "config": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}},
         {"kernel": "_layer_norm_fwd", "module": "fastvit.kernels.layer_norm", "key": [1024, "torch.bfloat16"],
          "config": {"BLOCK_M": 4, "num_warps": 4}}]


def write_run(tmp_path, *, bench=None, failures=(), picks=PICKS, junit=True) -> Path:
    (tmp_path / "report").mkdir()
    (tmp_path / "bench.json").write_text(json.dumps(bench_json() if bench is None else bench))
    (tmp_path / "report" / "results.json").write_text(json.dumps({"failures": list(failures),
                                                                  "autotune": {"picks": picks}}))
    if junit:
        (tmp_path / "tests.xml").write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="12" '
                                            'failures="1" errors="0" skipped="2"/></testsuites>')
    return tmp_path


def test_speedups_divide_the_other_median_by_triton():
    rows = {(r["op"], r["mode"], r["img_size"]): r for r in speedups(bench_json())}
    assert set(rows) == {("attention", "fwd", 224), ("attention", "fwdbwd", 1024), ("block", "fwd", 224)}
    a = rows[("attention", "fwd", 224)]
    assert a["vs_eager"] == pytest.approx(2.0) and a["vs_sdpa"] == pytest.approx(1.25)
    assert a["vs_compile"] == pytest.approx(1.5) and a["triton_ms"] == pytest.approx(2.0)
    assert a["target"] == "cuda-bf16"
    b = rows[("block", "fwd", 224)]
    assert b["vs_eager"] == pytest.approx(1.25) and "vs_sdpa" not in b and "vs_compile" not in b


def test_summary_of_a_passing_run(tmp_path):
    text, ok = summarise(write_run(tmp_path), {"tests": 0, "profile": 0, "bench": 0})
    assert ok
    lines = text.splitlines()
    assert lines[0] == "fastvit GPU acceptance: PASS"
    assert "  [pass] tests (exit 0): 9 passed, 1 failed, 2 skipped" in lines
    assert "  [pass] profile (exit 0)" in lines and "  [pass] bench (exit 0)" in lines
    row = next(line for line in lines if line.split()[:3] == ["attention", "fwd", "224"])
    assert row.split()[-3:] == ["2.00x", "1.25x", "1.50x"]
    block = next(line for line in lines if line.split()[:3] == ["block", "fwd", "224"])
    assert block.split()[-3:] == ["1.25x", "-", "-"]
    # geometric means over the cases that have that backend: eager (2, 2.25, 1.25), sdpa (1.25, 1.25)
    assert "geometric mean vs eager: 1.78x over 3 case(s)" in text
    assert "geometric mean vs sdpa: 1.25x over 2 case(s)" in text
    assert "3 choice(s) over 2 kernel(s)" in text
    assert "BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3  (x2)" in text
    assert "Problems" not in text
    assert len(lines) <= 30  # one screen


@pytest.mark.parametrize("case,needle", [
    ("step failed", "step 'profile' exited with status 1"),
    ("no triton timing", "no triton timing for block"),
    ("profile case raised", "profile case 'speed attention fwd 224px triton' raised RuntimeError: boom"),
    ("bench.json missing", "bench.json is missing"),
    ("bench.json unreadable", "bench.json is unreadable"),
])
def test_summary_fails_and_says_why(tmp_path, case, needle):
    steps = {"tests": 0, "profile": 0, "bench": 0}
    if case == "step failed":
        write_run(tmp_path)
        steps["profile"] = 1
    elif case == "no triton timing":
        medians = {k: {b: v for b, v in by.items() if not (k[0] == "block" and b == "triton")}
                   for k, by in MEDIANS.items()}
        write_run(tmp_path, bench=bench_json(medians))
    elif case == "profile case raised":
        write_run(tmp_path, failures=[{"case": "speed attention fwd 224px triton", "error": "RuntimeError: boom"}])
    elif case == "bench.json missing":
        write_run(tmp_path)
        (tmp_path / "bench.json").unlink()
    else:
        write_run(tmp_path)
        (tmp_path / "bench.json").write_text("{not json")
    text, ok = summarise(tmp_path, steps)
    assert not ok and text.startswith("fastvit GPU acceptance: FAIL")
    assert needle in text


def test_main_exit_status(tmp_path, capsys):
    write_run(tmp_path)
    assert main([str(tmp_path), "--step", "tests=0", "--step", "bench=0"]) == 0
    assert capsys.readouterr().out.startswith("fastvit GPU acceptance: PASS")
    assert main([str(tmp_path), "--step", "tests=5"]) == 1
    assert "[FAIL] tests (exit 5)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--step", "tests"])
    assert "expected NAME=EXIT_STATUS" in capsys.readouterr().err


def test_no_autotuning_recorded_is_said(tmp_path):
    text, ok = summarise(write_run(tmp_path, picks=[], junit=False), {"bench": 0})
    assert ok and "Autotuner picks: none recorded" in text


# -- the script ---------------------------------------------------------------------------------------
def _run_script(*args):
    # the script calls `python`: make it this interpreter, whatever PATH says
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_script_refuses_without_cuda_in_one_line(tmp_path):
    out = tmp_path / "acceptance"
    p = _run_script(str(out))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "needs a CUDA GPU" in p.stderr
    assert not out.exists()  # nothing was run, nothing written


def test_script_usage():
    p = _run_script()
    assert p.returncode == 2 and p.stderr.strip() == "usage: benchmarks/gpu_acceptance.sh OUTDIR"
