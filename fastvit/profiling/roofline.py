"""A roofline model: peak numbers from data sheets, and op costs counted by hand.

Everything here is a *model*, not a measurement: every dict it returns says so with
``"source": "model"``. The time an op needs is at least ``max(flops / peak, bytes / bandwidth)``;
which term wins says whether it is compute- or memory-bound on that GPU.

Counting conventions:

* ``flops`` are tensor-core FLOPs of the matrix products, 2 x multiply-accumulates. Elementwise
  work (softmax, LayerNorm, bias, GELU) runs on the CUDA cores and is reported separately as
  ``elementwise_flops`` with the per-element counts given by each function; ``predict`` uses only
  ``flops``, against the tensor-core peak.
* ``bytes`` are the bytes each kernel reads from and writes to DRAM, assuming every tensor is
  read once per kernel that uses it (no cache reuse across kernels, none lost within one). The
  ``ops`` list spells out each kernel's reads and writes, so the assumption can be checked.
"""
from __future__ import annotations

import dataclasses

__all__ = ["GPU", "GPUS", "DTYPE_BYTES", "get_gpu", "predict", "predict_cost", "attention_cost",
           "layer_norm_cost", "mlp_fc1_cost"]

TERA = 1e12


@dataclasses.dataclass(frozen=True)
class GPU:
    """Peak dense throughput (TFLOP/s, per dtype) and DRAM bandwidth (TB/s) of one product."""

    name: str
    arch: int
    tflops: dict
    bandwidth_tbs: float
    memory_gb: int
    source: str

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` ("fp16", "bf16", "tf32", "fp32")."""
        key = _dtype_key(dtype)
        if key not in self.tflops:
            raise ValueError(f"dtype must be one of {sorted(self.tflops)}, got {dtype!r}")
        return self.tflops[key] * TERA

    @property
    def bandwidth(self) -> float:
        """DRAM bandwidth in bytes/s."""
        return self.bandwidth_tbs * TERA


# Dense (no 2:4 sparsity) tensor-core peaks with FP32 accumulation, which is what our kernels and
# PyTorch's fp16/bf16 GEMMs use; "fp32" is the non-tensor-core (CUDA core) FP32 peak. Data sheets
# quote tensor-core numbers "with sparsity": those are halved here, as their footnotes say.
GPUS = {
    "h100-sxm": GPU(
        "NVIDIA H100 SXM5 80GB", 90,
        {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9}, 3.35, 80,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM: FP16/BF16 1,979 TFLOPS with sparsity, "
        "3.35 TB/s); dense figures from the NVIDIA H100 Tensor Core GPU Architecture whitepaper"),
    "h100-pcie": GPU(
        "NVIDIA H100 PCIe 80GB", 90,
        {"fp16": 756.5, "bf16": 756.5, "tf32": 378.0, "fp32": 51.0}, 2.0, 80,
        "NVIDIA H100 Tensor Core GPU datasheet (PCIe: FP16/BF16 1,513 and TF32 756 TFLOPS with "
        "sparsity, FP32 51 TFLOPS, 2 TB/s)"),
    "a100-sxm-80gb": GPU(
        "NVIDIA A100 SXM4 80GB", 80,
        {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}, 2.039, 80,
        "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM: FP16/BF16 312 TFLOPS, TF32 156, "
        "FP32 19.5, 2,039 GB/s)"),
    "a100-sxm-40gb": GPU(
        "NVIDIA A100 SXM4 40GB", 80,
        {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1.555, 40,
        "NVIDIA A100 Tensor Core GPU datasheet (40GB SXM: FP16/BF16 312 TFLOPS, 1,555 GB/s)"),
    "l4": GPU(
        "NVIDIA L4 24GB", 89,
        {"fp16": 121.0, "bf16": 121.0, "tf32": 60.0, "fp32": 30.3}, 0.300, 24,
        "NVIDIA L4 Tensor Core GPU datasheet (FP16/BF16 242 and TF32 120 TFLOPS with sparsity, "
        "FP32 30.3 TFLOPS, 300 GB/s)"),
    "rtx-4090": GPU(
        "NVIDIA GeForce RTX 4090 24GB", 89,
        {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6}, 1.008, 24,
        "NVIDIA Ada GPU Architecture whitepaper, appendix table for the RTX 4090 (FP16/BF16 tensor "
        "with FP32 accumulate 165.2 dense; FP16 accumulate would be 330.3; 1,008 GB/s)"),
}

_ALIASES = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100sxm": "h100-sxm", "h100pcie": "h100-pcie",
    "a100": "a100-sxm-80gb", "a100-80gb": "a100-sxm-80gb", "a100-sxm": "a100-sxm-80gb",
    "a100-40gb": "a100-sxm-40gb", "4090": "rtx-4090", "rtx4090": "rtx-4090",
    "geforce-rtx-4090": "rtx-4090",
}

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "tf32": 4, "fp32": 4}
_DTYPE_NAMES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}


def _dtype_key(dtype) -> str:
    name = str(dtype).removeprefix("torch.").lower()
    return _DTYPE_NAMES.get(name, name)


def get_gpu(gpu) -> GPU:
    """A GPU from the table, by key (``"h100-sxm"``), common alias (``"a100"``) or as is."""
    if isinstance(gpu, GPU):
        return gpu
    key = str(gpu).strip().lower().replace(" ", "-").replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)} (or a GPU), got {gpu!r}")
    return GPUS[key]


def predict(flops: float, bytes_moved: float, gpu, dtype="bf16") -> dict:
    """Roofline time of ``flops`` tensor-core FLOPs and ``bytes_moved`` DRAM bytes on ``gpu``.

    ``time_s = max(flops / peak, bytes / bandwidth)``; ``bound`` names the larger term.
    ``ridge_intensity`` is the FLOP/byte above which this GPU is compute-bound.
    """
    if flops < 0 or bytes_moved < 0:
        raise ValueError(f"flops and bytes_moved must be non-negative, got {flops}, {bytes_moved}")
    g = get_gpu(gpu)
    peak, bw = g.peak_flops(dtype), g.bandwidth
    compute_s, memory_s = flops / peak, bytes_moved / bw
    return {
        "gpu": g.name, "dtype": _dtype_key(dtype), "flops": flops, "bytes": bytes_moved,
        "arithmetic_intensity": flops / bytes_moved if bytes_moved else float("inf"),
        "ridge_intensity": peak / bw, "compute_time_s": compute_s, "memory_time_s": memory_s,
        "time_s": max(compute_s, memory_s), "bound": "compute" if compute_s >= memory_s else "memory",
        "peak_tflops": peak / TERA, "bandwidth_tbs": bw / TERA, "source": "model",
    }


def predict_cost(cost: dict, gpu, dtype="bf16") -> dict:
    """``predict`` on the output of one of the ``*_cost`` functions."""
    return predict(cost["flops"], cost["bytes"], gpu, dtype)


# ----------------------------------------------------------------------------------------------
# Op costs. Each kernel is one entry of "ops": (name, tensor FLOPs, elementwise FLOPs, bytes read,
# bytes written).
# ----------------------------------------------------------------------------------------------
def _op(name: str, reads: float, writes: float, flops: float = 0, elementwise: float = 0) -> dict:
    return {"name": name, "flops": flops, "elementwise_flops": elementwise, "bytes_read": reads,
            "bytes_written": writes, "bytes": reads + writes}


def _total(ops: list[dict], **extra) -> dict:
    flops = sum(o["flops"] for o in ops)
    nbytes = sum(o["bytes"] for o in ops)
    return {
        **extra, "flops": flops, "elementwise_flops": sum(o["elementwise_flops"] for o in ops), "bytes": nbytes,
        "arithmetic_intensity": flops / nbytes if nbytes else float("inf"), "kernels": len(ops), "ops": ops,
        "source": "model",
    }


def _positive(**kwargs):
    for name, value in kwargs.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


STAT_BYTES = 4  # logsumexp, mean, rstd and delta are fp32 whatever the input dtype
SOFTMAX_FLOPS_PER_ELEMENT = 5   # max, subtract, exp, sum, divide
SCALE_FLOPS_PER_ELEMENT = 1


def attention_cost(batch: int, heads: int, tokens: int, head_dim: int, dtype_bytes: int = 2,
                   kind: str = "fused", backward: bool = False) -> dict:
    """FLOPs and DRAM bytes of ``softmax(q k^T * scale) v`` on (batch, heads, tokens, head_dim).

    ``kind="eager"`` counts the kernels eager PyTorch runs for ``fastvit.reference.attention``,
    each materialising an N x N tensor: ``q @ k^T`` writes the scores, ``* scale`` reads and
    writes them, ``softmax`` reads and writes them, ``probs @ v`` reads the probabilities.
    Backward is autograd of the same graph (the probabilities are saved, not recomputed).

    ``kind="fused"`` counts a flash-attention kernel that keeps the N x N tile on chip: forward
    reads q, k, v and writes out and the fp32 logsumexp. Backward, as our kernels do it: a
    preprocess pass (delta = rowsum(dO * O)), then a dK/dV pass and a dQ pass, each reading
    q, k, v, dO, lse and delta, and each recomputing q k^T (no atomics, so dQ is its own pass).
    Re-reads of K/V tiles by successive query blocks are assumed to hit L2.
    """
    _positive(batch=batch, heads=heads, tokens=tokens, head_dim=head_dim, dtype_bytes=dtype_bytes)
    if kind not in ("eager", "fused"):
        raise ValueError(f"kind must be 'eager' or 'fused', got {kind!r}")
    bh = batch * heads
    nd = bh * tokens * head_dim * dtype_bytes       # bytes of one (B, H, N, D) tensor
    nn = bh * tokens * tokens * dtype_bytes         # bytes of one (B, H, N, N) tensor
    stat = bh * tokens * STAT_BYTES                 # bytes of one fp32 (B, H, N) statistic
    mm = 2 * bh * tokens * tokens * head_dim        # FLOPs of one N x N x D matrix product
    elems = bh * tokens * tokens
    softmax = SOFTMAX_FLOPS_PER_ELEMENT * elems
    if kind == "eager":
        if not backward:
            ops = [
                _op("scores = q @ k^T", reads=2 * nd, writes=nn, flops=mm),
                _op("scores * scale", reads=nn, writes=nn, elementwise=elems),
                _op("probs = softmax(scores)", reads=nn, writes=nn, elementwise=softmax),
                _op("out = probs @ v", reads=nn + nd, writes=nd, flops=mm),
            ]
        else:
            ops = [
                _op("dprobs = dout @ v^T", reads=2 * nd, writes=nn, flops=mm),
                _op("dv = probs^T @ dout", reads=nn + nd, writes=nd, flops=mm),
                _op("dscaled = softmax_backward(probs, dprobs)", reads=2 * nn, writes=nn, elementwise=3 * elems),
                _op("dscores = dscaled * scale", reads=nn, writes=nn, elementwise=elems),
                _op("dq = dscores @ k", reads=nn + nd, writes=nd, flops=mm),
                _op("dk = dscores^T @ q", reads=nn + nd, writes=nd, flops=mm),
            ]
    else:
        if not backward:
            ops = [_op("flash forward (q, k, v -> out, lse)", reads=3 * nd, writes=nd + stat, flops=2 * mm,
                       elementwise=softmax + elems)]
        else:
            reads = 4 * nd + 2 * stat  # q, k, v, dO, lse, delta
            ops = [
                _op("preprocess: delta = rowsum(dout * out)", reads=2 * nd, writes=stat,
                    elementwise=2 * bh * tokens * head_dim),
                # recompute s = q k^T, dv += p^T dO, dp = dO v^T, dk += ds^T q
                _op("dk, dv pass", reads=reads, writes=2 * nd, flops=4 * mm, elementwise=4 * elems),
                # recompute s = q k^T, dp = dO v^T, dq += ds k
                _op("dq pass", reads=reads, writes=nd, flops=3 * mm, elementwise=4 * elems),
            ]
    return _total(ops, op="attention", kind=kind, backward=backward, batch=batch, heads=heads, tokens=tokens,
                  head_dim=head_dim, dtype_bytes=dtype_bytes)


LAYER_NORM_FLOPS_PER_ELEMENT = 8  # mean: 1; variance: subtract, square, add; normalise: 2; affine: 2


def layer_norm_cost(rows: int, width: int, dtype_bytes: int = 2, fused: bool = True,
                    residual: bool = False) -> dict:
    """FLOPs and DRAM bytes of LayerNorm over ``width``, optionally after ``h = x + residual``.

    Both variants also write the fp32 mean and rstd per row (saved for backward) and read the
    weight and bias. Unfused is what the eager/sdpa backends run: ``x + residual`` as its own
    kernel (reads both, writes h), then PyTorch's one-pass ``layer_norm`` (reads h again, writes
    y). Fused reads x and residual once and writes h and y. Without a residual the two count the
    same: PyTorch's LayerNorm is already one pass over memory.
    """
    _positive(rows=rows, width=width, dtype_bytes=dtype_bytes)
    t = rows * width * dtype_bytes
    params = 2 * width * dtype_bytes
    stats = 2 * rows * STAT_BYTES
    ln_flops = LAYER_NORM_FLOPS_PER_ELEMENT * rows * width
    if residual and not fused:
        ops = [_op("h = x + residual", reads=2 * t, writes=t, elementwise=rows * width),
               _op("y = layer_norm(h)", reads=t + params, writes=t + stats, elementwise=ln_flops)]
    elif residual:
        ops = [_op("h = x + residual; y = layer_norm(h)", reads=2 * t + params, writes=2 * t + stats,
                   elementwise=ln_flops + rows * width)]
    else:
        ops = [_op("y = layer_norm(x)", reads=t + params, writes=t + stats, elementwise=ln_flops)]
    return _total(ops, op="layer_norm", fused=fused, residual=residual, rows=rows, width=width,
                  dtype_bytes=dtype_bytes)


GELU_FLOPS_PER_ELEMENT = 8  # a nominal count for x * Phi(x); erf/tanh cost varies by library


def mlp_fc1_cost(tokens: int, in_f: int, out_f: int, dtype_bytes: int = 2,
                 fused: bool = True, bias_in_gemm: bool = False) -> dict:
    """FLOPs and DRAM bytes of ``gelu(x @ W^T + b)``, the first Linear of a ViT MLP, forward.

    Unfused: the GEMM writes the pre-activation, the bias add reads and writes it again, GELU
    reads it and writes the output (PyTorch often folds the bias into the GEMM epilogue, so this
    is the upper end of eager's traffic; ``bias_in_gemm=True`` is that folding: cuBLAS's addmm
    writes x @ W^T + b, then GELU reads and writes it). Fused: one GEMM with a bias + GELU
    epilogue reads x, W and b and writes only the output.
    """
    _positive(tokens=tokens, in_f=in_f, out_f=out_f, dtype_bytes=dtype_bytes)
    x = tokens * in_f * dtype_bytes
    w = in_f * out_f * dtype_bytes
    b = out_f * dtype_bytes
    h = tokens * out_f * dtype_bytes
    gemm = 2 * tokens * in_f * out_f
    elems = tokens * out_f
    if fused:
        ops = [_op("y = gelu(x @ W^T + b)", reads=x + w + b, writes=h, flops=gemm,
                   elementwise=elems * (1 + GELU_FLOPS_PER_ELEMENT))]
    elif bias_in_gemm:
        ops = [_op("h = x @ W^T + b", reads=x + w + b, writes=h, flops=gemm, elementwise=elems),
               _op("y = gelu(h)", reads=h, writes=h, elementwise=GELU_FLOPS_PER_ELEMENT * elems)]
    else:
        ops = [_op("h = x @ W^T", reads=x + w, writes=h, flops=gemm),
               _op("h = h + b", reads=h + b, writes=h, elementwise=elems),
               _op("y = gelu(h)", reads=h, writes=h, elementwise=GELU_FLOPS_PER_ELEMENT * elems)]
    return _total(ops, op="mlp_fc1", fused=fused, bias_in_gemm=bias_in_gemm, tokens=tokens, in_f=in_f,
                  out_f=out_f, dtype_bytes=dtype_bytes)


# What each way of running a ViT block launches, per op (the columns of the report's roofline
# table; all "model"):
#   eager    the papers' graph in PyTorch: the N x N matrix through DRAM, a separate residual add,
#            bias add and GELU
#   sdpa     what timm and transformers run: FlashAttention-class fused attention (counted as our
#            fused kernels: same reads and writes), add + LayerNorm unfused, cuBLAS GEMM with the
#            bias in its epilogue, then GELU
#   compile  torch.compile's default (inductor) fusions as modelled here: attention through SDPA,
#            the add folded into the LayerNorm reduction, GEMM + bias by cuBLAS then a GELU
#            pointwise kernel (max-autotune's Triton GEMM templates can fuse GELU too: not modelled)
#   fused    fastvit's triton backend
BACKEND_COLUMNS = ("eager", "sdpa", "compile", "fused")


def block_op_costs(op: str, mode: str, batch: int, heads: int, tokens: int, head_dim: int, width: int,
                   hidden: int, dtype_bytes: int = 2) -> dict[str, list[dict]]:
    """The costs of one block op (``"attention"``, ``"add + layer_norm"``, ``"fc1 + gelu"``) per
    column of BACKEND_COLUMNS; ``mode`` "fwd" or "fwdbwd" (attention only)."""
    rows, e = batch * tokens, dtype_bytes
    if op == "attention":
        passes = (False, True) if mode == "fwdbwd" else (False,)
        flash = [attention_cost(batch, heads, tokens, head_dim, e, "fused", bw) for bw in passes]
        eager = [attention_cost(batch, heads, tokens, head_dim, e, "eager", bw) for bw in passes]
        return {"eager": eager, "sdpa": flash, "compile": flash, "fused": flash}
    if mode != "fwd":
        raise ValueError(f"mode must be 'fwd' for {op!r}, got {mode!r}")
    if op == "add + layer_norm":
        unfused = [layer_norm_cost(rows, width, e, fused=False, residual=True)]
        fused = [layer_norm_cost(rows, width, e, fused=True, residual=True)]
        return {"eager": unfused, "sdpa": unfused, "compile": fused, "fused": fused}
    if op == "fc1 + gelu":
        addmm_gelu = [mlp_fc1_cost(rows, width, hidden, e, fused=False, bias_in_gemm=True)]
        return {"eager": [mlp_fc1_cost(rows, width, hidden, e, fused=False)], "sdpa": addmm_gelu,
                "compile": addmm_gelu, "fused": [mlp_fc1_cost(rows, width, hidden, e, fused=True)]}
    raise ValueError(f"op must be 'attention', 'add + layer_norm' or 'fc1 + gelu', got {op!r}")
