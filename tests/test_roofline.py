"""Roofline model: data-sheet peaks and hand-counted FLOPs / bytes."""
import math

import pytest

from fastvit.profiling import roofline as rl


def test_data_sheet_numbers():
    h100 = rl.get_gpu("h100-sxm")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.peak_flops("fp16") == pytest.approx(989.4e12)
    assert h100.bandwidth == pytest.approx(3.35e12)
    assert rl.get_gpu("h100-pcie").bandwidth == pytest.approx(2.0e12)
    assert rl.get_gpu("A100").peak_flops("torch.bfloat16") == pytest.approx(312e12)  # alias, torch dtype name
    assert rl.get_gpu("a100-sxm-80gb").bandwidth == pytest.approx(2.039e12)
    assert rl.get_gpu("a100-sxm-40gb").bandwidth == pytest.approx(1.555e12)
    assert rl.get_gpu("l4").peak_flops("fp16") == pytest.approx(121e12)
    assert rl.get_gpu("RTX 4090").peak_flops("bf16") == pytest.approx(165.2e12)
    for gpu in rl.GPUS.values():
        assert gpu.source and gpu.arch in (80, 89, 90)
        # A dense fp16 tensor-core peak is well above the CUDA-core fp32 peak on every product.
        assert gpu.tflops["fp16"] > gpu.tflops["fp32"]


def test_predict_hand_checked():
    # One second of peak math on an H100 SXM, and one second of its memory bandwidth.
    p = rl.predict(989.4e12, 3.35e12 / 2, "h100-sxm", "bf16")
    assert p["time_s"] == pytest.approx(1.0) and p["bound"] == "compute"
    assert p["memory_time_s"] == pytest.approx(0.5) and p["source"] == "model"
    p = rl.predict(989.4e12 / 4, 3.35e12, "h100-sxm", "bf16")
    assert p["time_s"] == pytest.approx(1.0) and p["bound"] == "memory"
    assert p["ridge_intensity"] == pytest.approx(989.4 / 3.35)
    assert p["arithmetic_intensity"] == pytest.approx(989.4 / 4 / 3.35)


def test_bound_switches_as_intensity_grows():
    gpu = rl.get_gpu("a100-sxm-80gb")
    ridge = gpu.peak_flops("fp16") / gpu.bandwidth
    bounds = [rl.predict(ai * 1e9, 1e9, gpu, "fp16")["bound"] for ai in (1, ridge / 2, ridge * 2, 1e4)]
    assert bounds == ["memory", "memory", "compute", "compute"]
    # The fc1 GEMM's intensity grows with the token count: memory-bound for a handful of tokens.
    small = rl.predict_cost(rl.mlp_fc1_cost(4, 768, 3072, 2, fused=True), gpu, "fp16")
    large = rl.predict_cost(rl.mlp_fc1_cost(8 * 197, 768, 3072, 2, fused=True), gpu, "fp16")
    assert small["bound"] == "memory" and large["bound"] == "compute"


def test_attention_bytes_closed_form():
    b, h, n, d, s = 2, 3, 5, 4, 2
    nd, nn, stat = b * h * n * d * s, b * h * n * n * s, b * h * n * 4
    mm = 2 * b * h * n * n * d
    eager = rl.attention_cost(b, h, n, d, s, kind="eager")
    fused = rl.attention_cost(b, h, n, d, s, kind="fused")
    # eager: q@k^T (2nd in, nn out), *scale (nn, nn), softmax (nn, nn), probs@v (nn + nd in, nd out)
    assert eager["bytes"] == 4 * nd + 6 * nn and eager["kernels"] == 4
    assert fused["bytes"] == 4 * nd + stat and fused["kernels"] == 1
    assert eager["flops"] == fused["flops"] == 2 * mm
    eager_b = rl.attention_cost(b, h, n, d, s, kind="eager", backward=True)
    fused_b = rl.attention_cost(b, h, n, d, s, kind="fused", backward=True)
    assert eager_b["bytes"] == 8 * nd + 9 * nn and eager_b["flops"] == 4 * mm
    assert fused_b["bytes"] == 13 * nd + 5 * stat and fused_b["flops"] == 7 * mm  # recomputes q k^T twice
    for c in (eager, fused, eager_b, fused_b):
        assert c["source"] == "model"
        assert c["bytes"] == sum(o["bytes_read"] + o["bytes_written"] for o in c["ops"])


def test_attention_eager_over_fused_grows_with_tokens():
    ratios = []
    for n in (16, 64, 197, 577, 1025):
        eager = rl.attention_cost(8, 12, n, 64, 2, kind="eager")["bytes"]
        fused = rl.attention_cost(8, 12, n, 64, 2, kind="fused")["bytes"]
        assert eager > fused
        ratios.append(eager / fused)
    assert ratios == sorted(ratios) and ratios[-1] > 10 * ratios[0]
    # Backward: the fused passes re-read q, k, v, dO (13 (B,H,N,D) tensors against eager's 8), so
    # they only win once the N x N terms dominate: 9 N^2 > 5 N D, i.e. N > ~36 at D = 64.
    def backward_ratio(n):
        return (rl.attention_cost(8, 12, n, 64, 2, "eager", backward=True)["bytes"]
                / rl.attention_cost(8, 12, n, 64, 2, "fused", backward=True)["bytes"])
    assert backward_ratio(16) < 1 < backward_ratio(64) < backward_ratio(197) < backward_ratio(1025)


def test_attention_bound_on_h100():
    # Fused attention's intensity is about N/2 FLOP/byte in bf16: memory-bound at ViT-B/16's 197 tokens,
    # compute-bound at 4096. Eager's is about D/3 whatever N: always memory-bound.
    fused = [rl.predict_cost(rl.attention_cost(8, 12, n, 64, 2, "fused"), "h100-sxm", "bf16")["bound"]
             for n in (197, 4096)]
    eager = [rl.predict_cost(rl.attention_cost(8, 12, n, 64, 2, "eager"), "h100-sxm", "bf16")["bound"]
             for n in (197, 4096)]
    assert fused == ["memory", "compute"] and eager == ["memory", "memory"]


def test_layer_norm_bytes():
    rows, width, s = 6, 10, 2
    t, params, stats = rows * width * s, 2 * width * s, 2 * rows * 4
    plain = rl.layer_norm_cost(rows, width, s, fused=True, residual=False)
    assert plain["bytes"] == 2 * t + params + stats and plain["flops"] == 0
    assert rl.layer_norm_cost(rows, width, s, fused=False, residual=False)["bytes"] == plain["bytes"]
    fused = rl.layer_norm_cost(rows, width, s, fused=True, residual=True)
    unfused = rl.layer_norm_cost(rows, width, s, fused=False, residual=True)
    assert fused["bytes"] == 4 * t + params + stats  # x, residual in; h, y out
    assert unfused["bytes"] - fused["bytes"] == t  # h read back by the second kernel
    assert unfused["kernels"] == 2 and fused["kernels"] == 1 and fused["source"] == "model"
    assert rl.predict_cost(fused, "l4", "fp16")["bound"] == "memory"


def test_mlp_fc1_bytes_and_flops():
    t, i, o, s = 197, 768, 3072, 2
    fused = rl.mlp_fc1_cost(t, i, o, s, fused=True)
    unfused = rl.mlp_fc1_cost(t, i, o, s, fused=False)
    h = t * o * s
    assert fused["flops"] == unfused["flops"] == 2 * t * i * o
    assert fused["bytes"] == (t * i + i * o + o + t * o) * s
    assert unfused["bytes"] - fused["bytes"] == 4 * h  # GEMM writes h; bias reads + writes; GELU reads
    assert unfused["kernels"] == 3 and unfused["source"] == "model"
    assert math.isclose(fused["arithmetic_intensity"], fused["flops"] / fused["bytes"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="gpu must be one of"):
        rl.get_gpu("v100")
    with pytest.raises(ValueError, match="dtype must be one of"):
        rl.predict(1, 1, "h100-sxm", "fp8")
    with pytest.raises(ValueError, match="non-negative"):
        rl.predict(-1, 1, "h100-sxm")
    with pytest.raises(ValueError, match="kind"):
        rl.attention_cost(1, 1, 8, 8, 2, kind="flash")
    with pytest.raises(ValueError, match="tokens"):
        rl.attention_cost(1, 1, 0, 8, 2)
    with pytest.raises(ValueError, match="width"):
        rl.layer_norm_cost(4, -1, 2)


def test_block_op_costs_columns_order_the_backends():
    """Per op, bytes never grow from eager to sdpa to fused; sdpa's attention is the fused kernel,
    its LayerNorm and GELU are not; compile folds the add into the LayerNorm but not GELU."""
    args = dict(batch=32, heads=12, tokens=197, head_dim=64, width=768, hidden=3072)
    for op, mode in (("attention", "fwd"), ("attention", "fwdbwd"), ("add + layer_norm", "fwd"), ("fc1 + gelu", "fwd")):
        c = {k: sum(p["bytes"] for p in v) for k, v in rl.block_op_costs(op, mode, **args).items()}
        assert set(c) == set(rl.BACKEND_COLUMNS)
        assert c["eager"] >= c["sdpa"] >= c["fused"] and c["sdpa"] >= c["compile"] >= c["fused"], (op, c)
    att = rl.block_op_costs("attention", "fwd", **args)
    assert att["sdpa"][0]["bytes"] == att["fused"][0]["bytes"] < att["eager"][0]["bytes"]
    ln = rl.block_op_costs("add + layer_norm", "fwd", **args)
    assert ln["sdpa"][0]["bytes"] > ln["compile"][0]["bytes"] == ln["fused"][0]["bytes"]
    fc1 = rl.block_op_costs("fc1 + gelu", "fwd", **args)
    t = 32 * 197 * 3072 * 2  # one (tokens, hidden) bf16 activation: sdpa writes h and reads it back
    assert fc1["sdpa"][0]["bytes"] - fc1["fused"][0]["bytes"] == 2 * t
    with pytest.raises(ValueError, match="op must be"):
        rl.block_op_costs("softmax", "fwd", **args)
