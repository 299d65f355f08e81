"""A case that raises is a failure, never "not run": `fastvit profile`, `bench` and `memory` exit 1
naming the case and the error; with --keep-going they record it, finish, and still exit 1."""
from __future__ import annotations

import json

import pytest

from fastvit.cli import main
from fastvit.profiling import memory, speed

TINY = "vit_tiny_patch16_224"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sdpa_attention_explodes(monkeypatch):
    """Building the sdpa attention case raises; every other case is built as usual."""
    real = speed.build_case

    def build_case(op, backend, *args, **kwargs):
        if op == "attention" and backend == "sdpa":
            raise RuntimeError("boom\nsecond line of the message")
        return real(op, backend, *args, **kwargs)

    monkeypatch.setattr(speed, "build_case", build_case)


@pytest.fixture
def sdpa_memory_explodes(monkeypatch):
    real = memory.measure_attention

    def measure_attention(*args, backend="eager", **kwargs):
        if backend == "sdpa":
            raise MemoryError("tracker blew up")
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(memory, "measure_attention", measure_attention)


PROFILE = ["profile", "--model", TINY, "--resolutions", "32", "--backends", "eager,sdpa", "--reps", "2",
           "--no-progress", "--no-plots"]


def test_profile_stops_at_a_speed_case_that_raises(capsys, tmp_path, sdpa_attention_explodes):
    code, out, err = run(capsys, *PROFILE, "--out", str(tmp_path / "r"))
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "fastvit profile: case 'speed attention fwd 32px sdpa' raised RuntimeError: boom (--keep-going records "
        "failures and finishes the run)"]


def test_profile_stops_at_a_memory_case_that_raises(capsys, tmp_path, sdpa_memory_explodes):
    code, out, err = run(capsys, *PROFILE, "--out", str(tmp_path / "r"))
    assert code == 1 and out == ""
    assert "case 'memory inference sdpa 32px' raised MemoryError: tracker blew up" in err


def test_profile_keep_going_records_finishes_and_fails(capsys, tmp_path, sdpa_attention_explodes,
                                                      sdpa_memory_explodes):
    out_dir = tmp_path / "r"
    code, out, err = run(capsys, *PROFILE, "--keep-going", "--out", str(out_dir))
    assert code == 1
    failed = ["memory inference sdpa 32px", "memory training sdpa 32px", "speed attention fwd 32px sdpa",
              "speed attention fwdbwd 32px sdpa"]
    assert err.strip().splitlines() == [f"fastvit profile: case {c!r} raised " +
                                        ("MemoryError: tracker blew up" if c.startswith("memory") else
                                         "RuntimeError: boom") for c in failed]
    results = json.loads((out_dir / "results.json").read_text())
    assert [f["case"] for f in results["failures"]] == failed
    # the failed rows say so; everything else was measured
    mem = {(r["mode"], r["backend"]): r for r in results["memory"]["rows"]}
    assert mem[("inference", "sdpa")]["error"] == "MemoryError: tracker blew up"
    assert mem[("inference", "eager")]["available"] and mem[("inference", "eager")]["peak_bytes"] > 0
    rows = {(r["op"], r["mode"], r["backend"]): r for r in results["speed"]["rows"]}
    assert rows[("attention", "fwd", "sdpa")]["error"] == "RuntimeError: boom"
    assert rows[("attention", "fwd", "eager")]["available"]
    assert rows[("block", "fwd", "sdpa")]["available"]  # only the attention case raised
    md = (out_dir / "report.md").read_text()
    assert "## Failures (4)" in md and "- `speed attention fwd 32px sdpa`: RuntimeError: boom" in md
    assert "failed: MemoryError: tracker blew up" in md and "sdpa: failed: RuntimeError: boom" in md
    assert "# fastvit profile" in out  # the report was still printed


def test_bench_names_the_case_and_keep_going_records_it(capsys, sdpa_attention_explodes):
    argv = ["bench", "--model", TINY, "--ops", "attention", "--resolutions", "32", "--backends", "eager,sdpa",
            "--modes", "fwd", "--reps", "2", "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert "fastvit bench: case 'speed attention fwd 32px sdpa' raised RuntimeError: boom" in err
    code, out, err = run(capsys, *argv, "--keep-going", "--json")
    assert code == 1
    d = json.loads(out)
    assert d["failures"] == [{"case": "speed attention fwd 32px sdpa", "error": "RuntimeError: boom"}]
    by = {r["backend"]: r for r in d["rows"]}
    assert by["eager"]["available"] and by["eager"]["median_ms"] > 0
    assert not by["sdpa"]["available"] and by["sdpa"]["reason"] is None
    assert err.strip() == "fastvit bench: case 'speed attention fwd 32px sdpa' raised RuntimeError: boom"


def test_memory_names_the_case_and_keep_going_records_it(capsys, monkeypatch):
    import fastvit.profiling.memory as memory_mod

    def measure_attention(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(memory_mod, "measure_attention", measure_attention)
    argv = ["memory", "--model", TINY, "--resolutions", "32", "--backends", "eager", "--modes", "inference",
            "--no-progress"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert "fastvit memory: case 'memory attention inference eager 32px' raised RuntimeError: kernel exploded" in err
    code, out, err = run(capsys, *argv, "--keep-going")
    assert code == 1 and "failed: RuntimeError: kernel exploded" in out
    assert err.strip() == ("fastvit memory: case 'memory attention inference eager 32px' raised RuntimeError: "
                           "kernel exploded")


def test_a_failed_row_is_not_a_not_run_row():
    rows = [dict(op="attention", mode="fwd", img_size=224, tokens=197, backend="triton", available=False,
                 reason=None, error="RuntimeError: boom"),
            dict(op="attention", mode="fwd", img_size=224, tokens=197, backend="compile", available=False,
                 reason="needs CUDA")]
    text = speed.format_speed_table(rows)
    assert "failed: RuntimeError: boom" in text and "not run: needs CUDA" in text
