"""Mixed resolution (``fastvit profile --mixed``): the seeded mix, the analytic FLOPs of packed / padded /
one at a time against FlopCounterMode on the real forwards, the measured memory rows against an
independent tracker, the speed rows, and the section in report.md and results.json."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastvit import create_model
from fastvit.cli import build_parser
from fastvit.profiling import defaults
from fastvit.profiling.flops import count_flops
from fastvit.profiling.mixed import draw_sizes, mixed_flops
from fastvit.profiling.tracker import LiveTensorTracker

TINY = "vit_tiny_patch16_224"
TINY_MIX = {"images": 3, "min_side": 32, "max_side": 64, "step": 16, "min_aspect": 0.5, "max_aspect": 2.0, "seed": 1,
            "model": TINY}


def test_draw_sizes_is_seeded_and_keeps_the_stated_bounds():
    spec = dict(defaults.MIXED["cuda"])
    sizes = draw_sizes(spec, 16)
    assert sizes == draw_sizes(spec, 16) and len(sizes) == 32
    assert sizes != draw_sizes({**spec, "seed": 1}, 16)
    for h, w in sizes:
        assert 128 <= h <= 512 and 128 <= w <= 512 and h % 16 == 0 and w % 16 == 0
        assert 0.5 <= w / h <= 2.0
    assert len({tuple(s) for s in sizes}) > 10  # a mix, not one size
    assert all(h % 14 == 0 and w % 14 == 0 for h, w in draw_sizes(spec, 14))  # rounded to the patch


@pytest.fixture
def one_thread():
    """Forward passes here on one torch thread: on the shared 2-core machine two threads spin against
    the other work many-fold slower (the same reason as ``defaults.CPU_TIMING_THREADS``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mixed_flops_equal_flop_counter_mode_on_the_real_forwards(one_thread):
    """packed: FlopCounterMode over ``model(list)`` (eager: every product an aten matmul); padded:
    over the batch of every image at the longest size; both equal the analytic counts."""
    sizes = [[32, 48], [64, 64], [48, 32], [16, 32]]
    model = create_model(TINY, backend="eager").eval()
    f = mixed_flops(TINY, sizes)
    assert f["source"] == "model"
    packed, padded = f["ways"]["packed"]["flops"], f["ways"]["padded"]["flops"]
    imgs = [torch.randn(3, h, w) for h, w in sizes]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(imgs)
    assert packed == fc.get_total_flops()
    assert packed == sum(count_flops(TINY, tuple(s)).flops for s in sizes)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(len(sizes), 3, 64, 64))
    assert padded == fc.get_total_flops()
    assert padded > packed and f["ways"]["one_at_a_time"]["flops"] == packed
    # tokens: 7 + 17 + 7 + 3 packed; 4 x 17 padded
    assert f["padding_token_share"] == pytest.approx(1 - 34 / 68)
    assert f["padding_share"] == pytest.approx(1 - packed / padded)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """The section alone (the rest of ``fastvit profile`` is tested in test_cli.py) on a 3-image mix, memory
    on eager and sdpa, speed also asked of triton (on a CPU: not run, and says why), then written by
    ``write_report`` inside a results dict whose other sections are the analytic ones (fast) and empty
    measured ones."""
    from fastvit.profiling.mixed import run_mixed
    from fastvit.profiling.plan import make_plan, steps
    from fastvit.profiling.report import write_report
    from fastvit.profiling.run import _flops_section, _roofline_section, environment

    mp = pytest.MonkeyPatch()
    mp.setitem(defaults.MIXED, "cpu", TINY_MIX)
    try:
        plan = make_plan(TINY, "cpu", resolutions=[64], backends=["eager", "sdpa"], reps=2, mixed=True)
    finally:
        mp.undo()
    plan.mixed["speed_backends"] = ["eager", "sdpa", "triton"]
    labels, threads = [], torch.get_num_threads()
    m = run_mixed(plan, progress=labels.append)
    env = environment("cpu")
    env["load_average"] = {"start": env["load_average"], "end": env["load_average"]}  # as run_profile records it
    results = {"command": "fastvit profile --mixed", "created": "now", "elapsed_s": 0, "environment": env,
               "plan": plan.to_dict(), "flops": _flops_section(plan),
               "memory": {"scope": "-", "rows": [], "slopes": []},
               "speed": {"rows": []}, "roofline": _roofline_section(plan), "mixed": m, "failures": []}
    out_dir = tmp_path_factory.mktemp("mixed")
    write_report(results, out_dir, plots=False)
    no_mixed = make_plan(TINY, "cpu", resolutions=[64], backends=["eager", "sdpa"], reps=2)
    return plan, m, labels, (out_dir / "report.md").read_text(), out_dir, steps(plan) - steps(no_mixed), threads


def test_mixed_section_rows_and_labels(mixed_run):
    plan, m, labels, md, out_dir, n_steps, threads_before = mixed_run
    assert m["sizes"] == draw_sizes(TINY_MIX, 16) == plan.mixed["sizes"]
    assert any("mixed resolution on a stand-in mix, 3 images of 32-64px" in n for n in plan.notes)
    assert len(labels) == n_steps  # the progress bar's count is right
    assert torch.get_num_threads() == threads_before and m["speed"]["threads"] == 1  # the CPU policy, restored
    assert m["flops"]["source"] == "model"
    assert m["memory"]["source"] == "measured" and m["speed"]["source"] == "measured"
    rows = m["memory"]["rows"]
    assert {(r["scope"], r["mode"], r["backend"], r["way"]) for r in rows} == {
        (s, mo, b, w) for s in ("model", "attention") for mo in ("inference", "training") for b in ("eager", "sdpa")
        for w in ("packed", "padded", "one_at_a_time")}
    assert all(r["available"] and r["peak_bytes"] > 0 and r["source"] == "measured" for r in rows)
    assert all("LiveTensorTracker" in r["method"] for r in rows)
    assert all(r["model_bytes"] is None for r in rows if r["way"] == "packed")
    assert all(r["model_bytes"] > 0 for r in rows if r["way"] != "packed")
    by = {(r["scope"], r["mode"], r["backend"], r["way"]): r for r in rows}
    for mode in ("inference", "training"):  # a whole batch at the largest size holds more than its largest image
        for b in ("eager", "sdpa"):
            padded, single = by[("model", mode, b, "padded")], by[("model", mode, b, "one_at_a_time")]
            assert padded["peak_bytes"] > single["peak_bytes"]
    shares = {(s["scope"], s["mode"], s["backend"]): s["padding_share"] for s in m["memory"]["padding_shares"]}
    assert len(shares) == 8 and all(-1 < v < 1 for v in shares.values())


def test_packed_memory_row_is_an_independent_trackers_peak(mixed_run, one_thread):
    _, m, *_ = mixed_run
    model = create_model(TINY, backend="sdpa").eval()
    g = torch.Generator().manual_seed(TINY_MIX["seed"])
    imgs = [torch.randn(3, h, w, generator=g) for h, w in m["sizes"]]
    with torch.no_grad(), LiveTensorTracker() as t:
        model(imgs)
    row = next(r for r in m["memory"]["rows"]
               if (r["scope"], r["mode"], r["backend"], r["way"]) == ("model", "inference", "sdpa", "packed"))
    assert row["peak_bytes"] == t.peak_bytes > 0


def test_mixed_speed_rows(mixed_run):
    _, m, *_ = mixed_run
    rows = m["speed"]["rows"]
    timed = [r for r in rows if r["available"]]
    assert {(r["mode"], r["backend"], r["way"]) for r in timed} == {
        (mo, b, w) for mo in ("fwd", "fwdbwd") for b in ("eager", "sdpa")
        for w in ("packed", "padded", "one_at_a_time")}
    assert all(r["median_ms"] > 0 and r["reps"] == 2 and r["source"] == "measured" for r in timed)
    assert all(r["time_vs_packed"] == 1.0 for r in timed if r["way"] == "packed")
    triton = [r for r in rows if r["backend"] == "triton"]
    assert len(triton) == 6 and all(not r["available"] and "needs CUDA" in r["reason"] for r in triton)


def test_mixed_section_in_report_and_results_json(mixed_run):
    plan, m, _, md, out_dir, *_ = mixed_run
    section = md[md.index("## Mixed resolution"):md.index("## Roofline")]
    assert "GFLOPs (model)" in section and "peak MiB (measured)" in section and "### Speed (measured)" in section
    share = m["flops"]["padding_share"]
    assert f"For this mix, padding is **{share:.0%} of the padded batch's FLOPs** (model" in section
    assert "of its whole-model peak memory in inference" in section and "- triton: needs CUDA" in section
    assert "3 images on **vit_tiny_patch16_224**" in section and "seed 1" in section
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["mixed"]["flops"]["padding_share"] == share and saved["plan"]["mixed"]["sizes"] == m["sizes"]
    assert saved["mixed"]["memory"]["rows"] == json.loads(json.dumps(m["memory"]["rows"]))


def test_profile_takes_mixed():
    args = build_parser().parse_args(["profile", "--mixed", "--device", "cpu"])
    assert args.mixed is True
    assert build_parser().parse_args(["profile"]).mixed is False
