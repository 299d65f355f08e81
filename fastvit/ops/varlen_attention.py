"""Variable-length self-attention over packed tokens: the public functions over three backends.

Images of different sizes are packed along one token axis (no padding): q, k, v (T, H, D) and
``cu_seqlens`` (S+1 int32, 0 = cu[0] < ... < cu[S] = T) marking where each sequence starts;
each sequence attends only to itself. ``varlen_qkv_attention`` is the form a ViT block uses:
the packed qkv Linear output (T, 3*H*D) in, (T, H*D) out for the proj Linear.

Backends:
  ``triton``  the fused kernels (``fastvit.kernels.attention_varlen``, ``..._bwd``): programs mapped to
              (sequence, block) by a block table built on the device, no host synchronisation,
              no work on padding.
  ``eager``   a loop over sequences (runs of equal lengths batched), each the explicit
              softmax(q k^T) v with the N x N matrix in memory: the baseline.
  ``sdpa``    one ``F.scaled_dot_product_attention`` call per run of equal lengths (sequences of
              one length, in packed order, batched together). Chosen over one call on the
              padded batch with a key-padding mask because it was faster on CPU: 6 heads,
              head_dim 64, fp32, lengths (197, 577, 50, 197, 145, 257, 65, 401, 197, 1) (the
              padded batch holds 2.76x the tokens), one thread on the shared 2-core machine
              (load ~6), median of 10: forward 35 ms (per run) vs 180 ms (padded, mask),
              forward+backward 133 ms vs 540 ms. Measured with
              ``OMP_NUM_THREADS=1 python -m fastvit.ops.varlen_attention`` (prints both).

``lse`` (``return_lse=True``) is (H, T) fp32, the natural-log logsumexp of each query row over
its own sequence's keys: ``lse[:, cu[i]:cu[i+1]]`` is image i's, as ``attention`` returns it
per image, so per-image attention maps (``cls_attention``) work on each slice.

Validation (``_checks.check_cu_seqlens``): dtype, shape and device of ``cu_seqlens`` always;
its values (starts at 0, strictly increasing, ends at T, ``max_seqlen`` >= the longest
sequence) whenever they can be read without a device synchronisation, i.e. on CPU tensors
outside torch.compile tracing, and always on the ``eager`` and ``sdpa`` paths, which read the
lengths anyway. On a GPU the Triton path reads none of them on the host: ``max_seqlen`` only
picks its autotuning bucket there, and the kernels clamp every index, so a wrong value cannot
touch memory outside the tensors.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .. import reference
from ..backend import resolve_backend
from ._checks import (MAX_HEAD_DIM, check_cu_seqlens, check_dropout, check_kernel_limit, check_positive_int,
                      check_same, check_scale, check_tensor)


def _check(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=3)
    check_same({"q": q, "k": k, "v": v}, "dtype")
    check_same({"q": q, "k": k, "v": v}, "device")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"q, k and v must have the same shape (T, H, D), got q {tuple(q.shape)} and "
                             f"{name} {tuple(t.shape)}")
    if q.shape[-1] < 1 or q.shape[1] < 1:
        raise ValueError(f"q must have at least one head and head_dim >= 1, got shape {tuple(q.shape)}")
    check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen, q.device)
    return check_dropout(dropout_p), check_scale(scale)


def _runs(cu_seqlens):
    """(first token, length, count) of each run of consecutive equal-length sequences: one
    device->host read of cu_seqlens (the reference paths slice on the host)."""
    cu = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    runs, i = [], 0
    for length, group in itertools.groupby(lengths):
        n = len(list(group))
        runs.append((cu[i], length, n))
        i += n
    return runs


def _per_run(q, k, v, cu_seqlens, fn, return_lse, scale):
    """``fn(q, k, v)`` on (count, H, length, D) batches of equal-length sequences, concatenated
    back to (T, H, D); lse (H, T) from the same slices when asked."""
    outs, lses = [], []
    for start, length, count in _runs(cu_seqlens):
        span = slice(start, start + length * count)
        qs, ks, vs = (t[span].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v))
        outs.append(fn(qs, ks, vs).transpose(1, 2).flatten(0, 1))
        if return_lse:
            # fp32 whatever the input dtype, as ``attention`` returns it.
            lses.append(reference.attention_lse(qs.float(), ks.float(), scale).transpose(0, 1).flatten(1))
    out = torch.cat(outs)
    return (out, torch.cat(lses, 1)) if return_lse else out


def _sdpa_padded(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale):
    """The alternative measured against (see the module docstring): one SDPA call on the
    (S, H, max_seqlen, D) padded batch with a key-padding mask."""
    S = cu_seqlens.shape[0] - 1
    tok = torch.arange(q.shape[0], device=q.device, dtype=torch.int32)
    seq = torch.searchsorted(cu_seqlens[1:], tok, right=True)
    pos = tok - cu_seqlens[seq]
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]

    def pad(t):
        return t.new_zeros((S, max_seqlen) + t.shape[1:]).index_put((seq, pos), t).transpose(1, 2)

    mask = (torch.arange(max_seqlen, device=q.device) < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)[seq, pos]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     *, dropout_p: float = 0.0, scale: float | None = None, backend: str = "auto",
                     return_lse: bool = False):
    """Self-attention of each packed sequence with itself.

    q, k, v (T, H, D), any layout with a unit last stride (views of a (T, 3, H, D) packed qkv
    work by strides); ``cu_seqlens`` (S+1,) int32 on q's device; ``max_seqlen`` >= the longest
    sequence. Returns out (T, H, D) in q's dtype (and lse (H, T) fp32 with ``return_lse``).
    ``scale`` defaults to 1/sqrt(D); dropout whenever ``dropout_p > 0`` (pass 0 in eval mode).
    """
    dropout_p, scale = _check(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)
    backend = resolve_backend(backend, q.device, q.dtype)
    if backend == "triton":
        check_kernel_limit(q.shape[-1], MAX_HEAD_DIM, "head_dim")
        from ._varlen_attention_triton import triton_varlen_attention
        return triton_varlen_attention(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale,
                                       return_lse=return_lse)
    if q.device.type != "cpu":  # (CPU values were checked above) these paths read them on the host anyway
        check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen, q.device, values=True)
    if backend == "sdpa":
        def fn(qs, ks, vs):
            return F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, scale=scale)
    else:
        def fn(qs, ks, vs):
            return reference.attention(qs, ks, vs, scale=scale, dropout_p=dropout_p)
    return _per_run(q, k, v, cu_seqlens, fn, return_lse, scale)


def varlen_qkv_attention(qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, max_seqlen: int, *,
                         dropout_p: float = 0.0, scale: float | None = None, backend: str = "auto",
                         return_lse: bool = False):
    """Multi-head self-attention of packed sequences on the output of a qkv Linear.

    qkv (T, 3*H*D) laid out as timm's ``qkv`` Linear writes it (q|k|v, then heads); returns
    (T, H*D), ready for the ``proj`` Linear (and lse (H, T) fp32 with ``return_lse``).
    """
    check_tensor(qkv, "qkv", ndim=2)
    check_positive_int(num_heads, "num_heads")
    T, C3 = qkv.shape
    if C3 % (3 * num_heads):
        raise ValueError(f"qkv's last dimension must be 3 * num_heads * head_dim, got {C3} with num_heads={num_heads}")
    D = C3 // (3 * num_heads)
    q, k, v = qkv.view(T, 3, num_heads, D).unbind(1)
    dropout_p, scale = _check(q, k, v, cu_seqlens, max_seqlen, dropout_p, scale)
    backend = resolve_backend(backend, qkv.device, qkv.dtype)
    if backend == "triton":
        check_kernel_limit(D, MAX_HEAD_DIM, "head_dim")
        from ._varlen_attention_triton import triton_varlen_qkv_attention
        return triton_varlen_qkv_attention(qkv, num_heads, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale,
                                           return_lse=return_lse)
    res = varlen_attention(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, backend=backend,
                           return_lse=return_lse)
    out, lse = res if return_lse else (res, None)
    out = out.reshape(T, num_heads * D)
    return (out, lse) if return_lse else out


def _measure_sdpa_choice(lengths=(197, 577, 50, 197, 145, 257, 65, 401, 197, 1), heads=6, head_dim=64, reps=10):
    """Median ms of the two SDPA strategies on one mix, forward and forward+backward (CPU)."""
    import statistics
    import time

    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    T = int(cu[-1])
    leaves = [torch.randn(T, heads, head_dim, requires_grad=True) for _ in range(3)]
    dout = torch.randn(T, heads, head_dim)
    ways = {"loop": lambda: varlen_attention(*leaves, cu, max(lengths), backend="sdpa"),
            "padded": lambda: _sdpa_padded(*leaves, cu, max(lengths), 0.0, None)}
    ref = ways["loop"]().detach()
    if not torch.allclose(ways["padded"]().detach(), ref, atol=1e-5):  # the same function, before timing it
        raise RuntimeError("the padded and per-run SDPA strategies disagree: nothing to compare")
    for mode in ("fwd", "fwd+bwd"):
        times = {name: [] for name in ways}
        for _ in range(reps):
            for name, way in ways.items():  # interleaved: the machine's load hits both alike
                t0 = time.perf_counter()
                if mode == "fwd":
                    with torch.no_grad():
                        way()
                else:
                    way().backward(dout)
                times[name].append((time.perf_counter() - t0) * 1e3)
        print(mode, {name: round(statistics.median(t), 2) for name, t in times.items()},
              f"padded tokens / packed tokens = {len(lengths) * max(lengths) / T:.2f}")


if __name__ == "__main__":
    _measure_sdpa_choice()
