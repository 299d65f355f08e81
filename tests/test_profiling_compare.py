"""ViT against a CNN (``fastvit profile --compare``, ``fastvit flops resnet50``): the CNN FLOP counter
against torchvision's published figures and against FlopCounterMode, the measured memory rows,
the report section and plot, and the refusals of names that are not classification CNNs."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastvit.cli import main
from fastvit.profiling import defaults
from fastvit.profiling.cnn import build_cnn, count_cnn_flops, measure_cnn_memory, published
from fastvit.profiling.tracker import LiveTensorTracker

TINY = "vit_tiny_patch16_224"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- FLOPs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, gmacs, params", [("resnet18", 1.814, 11_689_512), ("resnet50", 4.089, 25_557_032)])
def test_cnn_flops_match_torchvision_published(name, gmacs, params):
    """torchvision's meta["_ops"] (labelled GFLOPS, a multiply-accumulate count) and num_params;
    the literals are the published figures, so a change in torchvision's metadata shows too."""
    r = count_cnn_flops(name, 224)
    pub = published(name)
    assert pub["gmacs"] == gmacs and pub["params"] == params
    assert r["macs"] / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert r["params"] == params
    assert r["flops"] == 2 * r["macs"] == sum(r["by_component"]["matmul"].values())


@pytest.mark.parametrize("name, size, batch", [("resnet18", 224, 1), ("resnet50", 160, 2), ("mobilenet_v3_small", 96, 1)])
def test_cnn_flops_equal_flop_counter_mode_on_the_same_forward(name, size, batch):
    model = build_cnn(name, device="meta").eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.empty(batch, 3, size, size, device="meta"))
    assert count_cnn_flops(name, size, batch)["flops"] == fc.get_total_flops()


def test_resnet50_against_vit_base_the_seed_claim():
    from fastvit.profiling.flops import count_flops

    cnn, vit = count_cnn_flops("resnet50"), count_flops("vit_base_patch16_224")
    assert vit.params / 1e6 == pytest.approx(86.6, abs=0.1) and cnn["params"] / 1e6 == pytest.approx(25.6, abs=0.1)
    assert 4.0 < vit.flops / cnn["flops"] < 4.5  # "4x more compute"


def test_flops_json_of_a_cnn_has_the_vit_keys(capsys):
    code, out, err = run(capsys, "flops", "resnet50", "--json", "--resolutions", "224,448")
    assert code == 0, err
    cnn = json.loads(out)
    code, out, _ = run(capsys, "flops", TINY, "--json", "--resolutions", "224,448")
    vit = json.loads(out)
    assert set(vit) <= set(cnn)
    assert set(vit["attention_share_by_resolution"][0]) == set(cnn["attention_share_by_resolution"][0])
    assert cnn["macs"] == 4_089_184_256 and cnn["tokens"] is None and cnn["source"] == "model"
    assert "analytic" in cnn["counter"]
    big = cnn["attention_share_by_resolution"][1]
    assert big["flops"] == count_cnn_flops("resnet50", 448)["flops"]


@pytest.mark.parametrize("argv, needle", [
    (("flops", "fasterrcnn_resnet50_fpn"), "detection model, not a classification model"),
    (("flops", "raft_small"), "optical flow model, not a classification model"),
    (("profile", "--compare", "fasterrcnn_resnet50_fpn"), "detection model, not a classification model"),
    (("profile", "--compare", "resnt50"), "did you mean resnet50"),
    (("flops", "resnet5"), "did you mean resnet50"),
    (("profile", "--compare", "vit_b_16", "--no-progress"), "outside Conv/Linear modules"),
])
def test_names_that_are_not_classification_cnns_give_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- memory, and the whole section -------------------------------------------------------------------
def test_cnn_memory_rows_are_the_trackers_peak():
    """The row's peak is what an independent LiveTensorTracker sees over the same forward."""
    model = build_cnn("resnet18")
    row = measure_cnn_memory(model, 64, mode="inference")
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad(), LiveTensorTracker() as t:
        model(x)
    assert row["peak_bytes"] == t.peak_bytes > 0
    assert row["source"] == "measured" and row["model_bytes"] is None and "LiveTensorTracker" in row["method"]
    train = measure_cnn_memory(model, 64, mode="training")
    grads = sum(p.numel() * 4 for p in model.parameters())
    assert train["peak_bytes"] > grads  # every parameter's gradient, and the saved activations
    assert all(p.grad is None for p in model.parameters()) and not model.training


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """The section alone (the rest of ``fastvit profile`` is tested in test_cli.py), rendered and
    plotted into a folder, at 64 and 96 px (BatchNorm in training needs more than 1x1 at the end)."""
    from fastvit.profiling.compare import run_compare
    from fastvit.profiling.plots import make_plots
    from fastvit.profiling.plan import make_plan
    from fastvit.profiling.render_compare import compare_md

    mp = pytest.MonkeyPatch()
    mp.setitem(defaults.COMPARE_RESOLUTIONS, "cpu", (64, 96))
    try:
        plan = make_plan(TINY, "cpu", resolutions=[64], backends=["eager", "sdpa"], reps=2, compare="resnet18")
    finally:
        mp.undo()
    labels = []
    c = run_compare(plan, progress=labels.append)
    results = {"compare": c, "plan": plan.to_dict(), "environment": {"device": "cpu"},
               "memory": {"rows": []}, "speed": {"rows": []}}
    out_dir = tmp_path_factory.mktemp("compare")
    files, _ = make_plots(results, out_dir)
    results["plots"] = {"files": files, "note": None}
    return plan, c, labels, "\n".join(compare_md(results)), out_dir


def test_profile_compare_section(compare_run):
    plan, c, labels, md, out_dir = compare_run
    assert any("ViT against resnet18" in n for n in plan.notes)
    assert c["flops"]["source"] == "model" and c["memory"]["source"] == "measured"
    assert c["speed"]["source"] == "measured"
    assert c["flops"]["cnn_vs_published"]["gmacs_ratio"] == pytest.approx(1.0, rel=0.01)
    rows = c["memory"]["rows"]
    assert {(r["network"], r["backend"], r["mode"], r["img_size"]) for r in rows} == {
        (n, b, m, s) for (n, b) in (("resnet18", "eager"), (TINY, "eager"), (TINY, "sdpa"))
        for m in ("inference", "training") for s in (64, 96)}
    assert all(r["available"] and r["peak_bytes"] > 0 and r["source"] == "measured" for r in rows)
    assert all("LiveTensorTracker" in r["method"] for r in rows)
    # the CNN has no analytic memory model; the ViT's sits beside its measurement, within 1%
    assert all(r["model_bytes"] is None for r in rows if r["network"] == "resnet18")
    assert all(abs(r["model_bytes"] / r["peak_bytes"] - 1) < 0.01 for r in rows if r["network"] == TINY)
    assert all(s["slope"] is not None for s in c["memory"]["slopes"])
    speed = c["speed"]["rows"]
    assert {(r["network"], r["backend"]) for r in speed} == {("resnet18", "eager"), (TINY, "eager"), (TINY, "sdpa")}
    assert all(r["median_ms"] > 0 and r["reps"] == 2 for r in speed)
    assert next(r for r in speed if r["network"] == "resnet18")["time_vs_cnn"] == 1.0
    assert "compare memory training resnet18 96px" in labels
    assert "## ViT against a CNN" in md and "torchvision published" in md and "slope (measured)" in md
    assert "](vit_vs_cnn_memory.png)" in md and (out_dir / "vit_vs_cnn_memory.png").stat().st_size > 10_000
