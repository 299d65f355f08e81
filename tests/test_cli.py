"""The ``fastvit`` command, run in-process: every subcommand's --json output, its text output,
bad arguments (one line on stderr, exit status 2, no traceback) and the profile report folder."""
from __future__ import annotations

import json
import struct
import sys

import pytest
import torch

from fastvit import count_params, list_models, model_config
from fastvit.cli import main
from fastvit.profiling import report as report_mod

TINY = "vit_tiny_patch16_224"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out), err


# -- flops -----------------------------------------------------------------------------------------
def test_flops_json(capsys):
    d, _ = run_json(capsys, "flops", "vit_base_patch16_224", "--img-size", "224")
    for key in ("model", "img_size", "tokens", "params", "flops", "macs", "by_component"):
        assert key in d
    assert d["model"] == "vit_base_patch16_224" and d["img_size"] == 224 and d["tokens"] == 197
    assert d["params"] == count_params(**model_config("vit_base_patch16_224").kwargs())
    assert d["flops"] == 2 * d["macs"] == sum(d["by_component"]["matmul"].values())
    assert 17.5e9 < d["macs"] < 17.6e9  # timm's table says 17.58 GMACs, LayerNorms included
    shares = d["attention_share_by_resolution"]
    assert [r["img_size"] for r in shares] == [224, 384, 512, 768, 1024]
    assert all(a["attention_share"] < b["attention_share"] for a, b in zip(shares, shares[1:]))


def test_flops_text_and_other_size(capsys):
    code, out, _ = run(capsys, "flops", TINY, "--img-size", "384", "--resolutions", "224,448")
    assert code == 0
    assert "vit_tiny_patch16_224 @ 384x384" in out and "577 tokens" in out
    assert "Attention share" in out and "448" in out


# -- memory ----------------------------------------------------------------------------------------
def test_memory_json(capsys):
    d, err = run_json(capsys, "memory", "--model", TINY, "--resolutions", "32,64", "--backends", "eager,sdpa,triton",
                      "--device", "cpu")
    rows = d["rows"]
    assert len(rows) == 2 * 3 * 2  # modes x backends x resolutions
    for r in rows:
        for key in ("img_size", "tokens", "backend", "mode", "peak_bytes", "model_bytes"):
            assert key in r
        assert r["available"], r["reason"]
        assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] > 0
    by = {(r["mode"], r["backend"], r["img_size"]): r for r in rows}
    assert by[("inference", "eager", 64)]["tokens"] == 17
    # the eager path holds N x N scores, the fused ones do not
    assert by[("inference", "eager", 64)]["peak_bytes"] > by[("inference", "triton", 64)]["peak_bytes"]
    assert {s["backend"] for s in d["slopes"]} == {"eager", "sdpa", "triton"}
    assert "attention inference eager 32px" in err  # the progress bar, on stderr


def test_memory_text(capsys):
    code, out, _ = run(capsys, "memory", "--model", TINY, "--resolutions", "32,64", "--modes", "inference",
                       "--no-progress")
    assert code == 0
    assert "log-log slope" in out and "measured" in out and "eager" in out and "sdpa" in out


# -- bench -----------------------------------------------------------------------------------------
def test_bench_json(capsys):
    d, _ = run_json(capsys, "bench", "--model", TINY, "--ops", "attention,layer_norm", "--resolutions", "32",
                    "--backends", "eager,sdpa,triton", "--modes", "fwd,fwdbwd", "--reps", "2", "--device", "cpu",
                    "--no-progress")
    assert d["source"] == "measured"
    rows = {(r["op"], r["mode"], r["backend"]): r for r in d["rows"]}
    # sdpa is the eager code for LayerNorm: not listed there
    assert set(rows) == {(op, m, b) for op in ("attention", "layer_norm") for m in ("fwd", "fwdbwd")
                         for b in ("eager", "triton")} | {("attention", m, "sdpa") for m in ("fwd", "fwdbwd")}
    for (op, mode, backend), r in rows.items():
        if backend == "triton":
            assert not r["available"] and r["reason"].startswith("needs CUDA")
            continue
        assert r["available"], r["reason"]
        assert r["median_ms"] > 0 and r["reps"] == 2
        assert r["speedup_vs_eager"] == pytest.approx(rows[(op, mode, "eager")]["median_ms"] / r["median_ms"])
        assert ("tflops" in r) == (op == "attention") and ("gbps" in r) == (op == "layer_norm")
    assert rows[("attention", "fwd", "eager")]["speedup_vs_eager"] == 1.0
    # FLOPs of attention: 4 B H N^2 D forward, 3x that with the backward
    assert rows[("attention", "fwd", "eager")]["flops"] == 4 * 3 * 5 * 5 * 64
    assert rows[("attention", "fwdbwd", "eager")]["flops"] == 3 * 4 * 3 * 5 * 5 * 64


def test_bench_text_with_compile(capsys):
    code, out, err = run(capsys, "bench", "--model", TINY, "--ops", "attention", "--resolutions", "32", "--backends",
                         "eager,compile", "--modes", "fwd", "--reps", "2", "--no-progress")
    assert code == 0, err
    lines = {line.split()[5]: line for line in out.splitlines() if line.startswith("attention ")}
    assert set(lines) == {"eager", "compile"}
    assert "1.00x" in lines["eager"] and "not run" not in lines["compile"]
    assert "vs eager" in out


# -- compile-report --------------------------------------------------------------------------------
def test_compile_report_json(capsys):
    d, _ = run_json(capsys, "compile-report", "--arch", "sm_80,sm_90", "--kernels", "layer_norm",
                    "--name", "_layer_norm_bwd_dwdb_fp16_p32_n64_w4")
    assert d["archs"] == ["sm_80", "sm_90"]
    reports = d["reports"]
    # the kernel, its layer-scale (_scale) variant and the _unaligned twin of each, on two architectures
    names = {r["name"].removeprefix("_layer_norm_bwd_dwdb_fp16_p32_n64_w4") for r in reports}
    assert names == {"", "_scale", "_unaligned", "_scale_unaligned"} and len(reports) == 8
    for r in reports:
        for key in ("name", "arch", "registers", "spill_bytes", "shared_bytes", "hmma", "hgmma", "occupancy"):
            assert key in r
        assert r["registers"] > 0 and 0 < r["occupancy"] <= 1
    assert {r["arch"] for r in reports} == {"sm_80", "sm_90"} and {r["cc"] for r in reports} == {80, 90}


# -- bad arguments ---------------------------------------------------------------------------------
BAD = [
    (["flops", "vit_nonexistent"], "unknown model"),
    (["flops", "--img-size", "230"], "patch size 16"),
    (["memory", "--model", "vit_base_patch32_224", "--resolutions", "224,240"], "patch size 32"),
    (["bench", "--resolutions", "100"], "patch size 16"),
    (["bench", "--dtype", "fp8"], "dtype"),
    (["profile", "--dtype", "float64"], "dtype"),
    (["profile", "--resolutions", "224,abc"], "--resolutions"),
    (["profile", "--model", "resnet50"], "unknown model"),
    (["bench", "--device", "tpu"], "--device"),
    (["bench", "--ops", "attention,conv"], "--ops"),
    (["memory", "--depth", "2"], "--depth"),
    (["compile-report", "--arch", "sm_70"], "sm_70"),
    (["frobnicate"], "invalid choice"),
    ([], "choose a command"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_arguments_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err
    assert lines[0].startswith("fastvit")


def test_cuda_without_cuda_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    code, out, err = run(capsys, "profile", "--device", "cuda")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "CUDA is not available" in err


def test_unknown_model_lists_close_matches_and_the_list_command(capsys):
    for argv in (["flops", "vit_bse_patch16_224"], ["memory", "--model", "vit_bse_patch16_224"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert "unknown model 'vit_bse_patch16_224'; did you mean vit_base_patch16_224" in err
        assert "`fastvit list`" in err and "list_models()" not in err


def test_list_prints_every_registered_name(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.splitlines() == list_models()
    d, _ = run_json(capsys, "list")
    assert [m["name"] for m in d] == list_models()
    assert {m["name"]: m["patch_size"] for m in d}["vit_base_patch32_224"] == 32


def _subcommand_parsers():
    import argparse

    from fastvit.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, sub.choices


def test_every_option_of_every_subcommand_has_help():
    import argparse

    parser, subs = _subcommand_parsers()
    assert set(subs) == {"profile", "flops", "memory", "bench", "compile-report", "list"}
    missing = []
    for name, p in [("fastvit", parser), *subs.items()]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS or len(action.help) < 10:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("command,options", [
    ("memory", ["--resolutions", "--modes", "--batch", "--scope", "--depth", "--backends", "--keep-going"]),
    ("bench", ["--ops", "--backends", "--modes", "--resolutions", "--batch", "--keep-going"]),
    ("profile", ["--resolutions", "--backends", "--out", "--keep-going"]),
])
def test_subcommand_help_shows_each_option_with_its_text(capsys, command, options):
    _, subs = _subcommand_parsers()
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    for opt in options:
        (action,) = [a for a in subs[command]._actions if opt in a.option_strings]
        assert opt in out and " ".join(action.help.split()[:4]) in " ".join(out.split()), opt


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "profile" in out and "compile-report" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("fastvit ")


# -- profile ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def profile_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    # module-scoped: capsys is function-scoped, so capture by hand
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["profile", "--model", TINY, "--resolutions", "32,64", "--backends", "eager,sdpa,triton",
                     "--out", str(out_dir), "--reps", "2", "--json"])
    return code, out.getvalue(), err.getvalue(), out_dir, threads


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_profile_writes_report(profile_run):
    code, out, err, out_dir, threads_before = profile_run
    assert code == 0, err
    results = json.loads(out)
    assert json.loads((out_dir / "results.json").read_text())["plan"] == results["plan"]
    for key in ("environment", "plan", "flops", "memory", "speed", "roofline"):
        assert key in results
    assert results["flops"]["source"] == "model" and results["roofline"]["source"] == "model"
    assert results["speed"]["source"] == "measured"
    assert all(r["source"] == "model" for r in results["roofline"]["rows"])
    assert all(r["source"] == "measured" for r in results["speed"]["rows"])
    # memory: every (mode, backend) at both resolutions, with the measured peak and the model
    mem = results["memory"]["rows"]
    assert {(r["mode"], r["backend"], r["img_size"]) for r in mem} == {
        (m, b, s) for m in ("inference", "training") for b in ("eager", "sdpa", "triton") for s in (32, 64)}
    assert all(r["available"] and r["peak_bytes"] > 0 and r["model_bytes"] > 0 for r in mem)
    assert all(s["slope"] is not None and s["model_slope"] is not None for s in results["memory"]["slopes"])
    # speed at the smallest and the largest resolution; triton said why it did not run
    speed = results["speed"]["rows"]
    assert {r["img_size"] for r in speed} == {32, 64}
    assert any(r["op"] == "attention" and r["backend"] == "sdpa" and r["available"] for r in speed)
    assert all(r["reason"].startswith("needs CUDA") for r in speed if r["backend"] == "triton")
    # a row is "not run" only for a stated reason: no CUDA (triton timing), or the CPU policy
    from fastvit.profiling.defaults import CPU_COMPILE_REASON
    assert all(r["reason"].startswith("needs CUDA") or r["reason"] == CPU_COMPILE_REASON
               for r in speed if not r["available"])
    assert results["failures"] == [] and not any("error" in r for r in speed + mem)
    # timed on one thread (the CPU policy), and the threads of the process are as they were after
    assert results["speed"]["threads"] == 1 and torch.get_num_threads() == threads_before
    assert any("CPU run" in n for n in results["plan"]["notes"])
    # the progress bar went to stderr
    assert "done in" in err and "memory inference eager 32px" in err

    md = (out_dir / "report.md").read_text()
    for heading in ("## FLOPs (model", "## Attention peak memory (measured", "Log-log slope", "## Speed (measured)",
                    "## Roofline predictions for GPUs (model, not measured)"):
        assert heading in md
    assert "CPU run: fewer, smaller cases" in md
    plots = [f for k, f in report_mod.PLOT_FILES.items() if k != "compare"]  # compare: --compare only
    for name in plots:
        assert f"]({name})" in md
        w, h = _png_size(out_dir / name)
        assert w > 300 and h > 200
    assert sorted(results["plots"]["files"]) == sorted(plots) and "compare" not in results


def test_profile_without_matplotlib(profile_run, tmp_path, monkeypatch):
    results = json.loads(profile_run[1])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    paths = report_mod.write_report(results, tmp_path)
    assert paths["plots"] == [] and "fastvit[plot]" in paths["plot_note"]
    assert not list(tmp_path.glob("*.png"))
    md = (tmp_path / "report.md").read_text()
    assert "No plot: matplotlib is not installed" in md
    assert json.loads((tmp_path / "results.json").read_text())["plots"]["files"] == []


def test_profile_cli_says_no_plots_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "profile", "--model", TINY, "--resolutions", "32", "--backends", "eager",
                         "--out", str(tmp_path), "--reps", "2", "--no-progress")
    assert code == 0, err
    assert "matplotlib is not installed" in err and "Traceback" not in err
    assert (tmp_path / "report.md").exists() and not list(tmp_path.glob("*.png"))
    assert "# fastvit profile" in out and "wrote" in out


# -- the GPU benchmark code path, run once in Triton's interpreter --------------------------------
@pytest.mark.parametrize("op", ["attention", "layer_norm", "mlp", "block"])
def test_triton_speed_cases_execute(op, monkeypatch):
    """The triton cases are timed only on a GPU; here each is built and run once in Triton's
    interpreter, forward and forward + backward, so the code the GPU benchmarks run is exercised
    (and does launch Triton kernels, in the backward too)."""
    from fastvit.profiling import speed, speed_cases
    from fastvit.profiling.launches import count_launches

    monkeypatch.setattr(speed_cases, "backend_unavailable", lambda backend, device: None)
    launches = {}
    for mode in speed.MODES:
        case = speed.build_case(op, "triton", mode, 32, model=TINY)
        with count_launches() as counted:
            case.fn()
        launches[mode] = sum(counted.triton.values())
    assert launches["fwd"] > 0
    assert launches["fwdbwd"] > launches["fwd"]
