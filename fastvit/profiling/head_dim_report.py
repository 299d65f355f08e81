"""Does a head dim that is not a power of two cost its own width, or the next power of two's?

Measured without a GPU: the attention forward, dK/dV and dQ are compiled at head dims 64, 72,
80, 88, 96 and 112 in one fixed tile per kernel (``kernels.attention.head_dim_scaling_specs``),
and the matrix instructions per program are counted in the machine code. Where the instruction
has one fixed shape (HMMA m16n8k16 on sm_80/86/89/120, MFMA 16x16 on AMD with the attention
configs' ``matrix_instr_nonkdim=16``) the count is proportional to the multiply-adds issued, so
count(d) / count(64) is the work at head dim d relative to 64. On sm_90 (HGMMA) and sm_100
(tcgen05) one instruction covers a variable N, so counts are not work: no table there.

What the chunked kernels should issue (modelled, shown beside the measurement): the head dim
rounded up to a multiple of 16, over 64 (72 -> 80/64 = 1.25). Padding to a power of two (the
kernels before chunking) would be next_power_of_2(d) / 64 = 2.0 for every head dim here.
"""
from __future__ import annotations

from typing import Sequence

from .arch_limits import arch_name, compute_capability, is_amd
from .kernel_report import KernelReport

HEAD_DIMS = (64, 72, 80, 88, 96, 112)
KERNELS = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "dkdv", "_attn_bwd_dq": "dq"}


def fixed_shape_mma(arch) -> bool:
    """Whether a matrix-instruction count measures work on ``arch`` (one fixed instruction shape)."""
    if is_amd(arch):
        return True
    cc = compute_capability(arch)
    return cc < 90 or cc >= 110


def specs(arch, head_dims: Sequence[int] = HEAD_DIMS) -> list:
    from ..kernels import attention
    from ..kernels._configs import arch_family

    return attention.head_dim_scaling_specs(head_dims, family=arch_family(arch_name(arch)))


def modelled_ratio(head_dim: int) -> float:
    """Chunked: the head dim rounded up to a multiple of 16 (the chunks' sum), over 64."""
    from ..kernels._attention_common import head_dim_chunks

    return sum(head_dim_chunks(head_dim)) / 64


def padded_ratio(head_dim: int) -> float:
    """Padded to one power-of-two tile, over 64: what the kernels issued before chunking."""
    from ..kernels._attention_common import block_d

    return block_d(head_dim) / 64


def rows(reports: Sequence[KernelReport]) -> list[dict]:
    """One row per (arch, kernel, head dim): measured instructions, the ratio to head dim 64 in the
    same arch and kernel, and the modelled ratios."""
    base = {(r.arch, r.kernel): r.tensor_core_instructions for r in reports if r.head_dim == 64}
    out = []
    for r in reports:
        ref = base.get((r.arch, r.kernel))
        count = r.tensor_core_instructions
        out.append({
            "arch": r.arch, "kernel": KERNELS.get(r.kernel, r.kernel), "head_dim": r.head_dim,
            "tile": {k: v for k, v in r.config.items() if k in ("BLOCK_M", "BLOCK_N")} | {"num_warps": r.num_warps},
            "matrix_instructions": count,
            "ratio_measured": None if not ref or count is None else count / ref,
            "ratio_chunked_model": modelled_ratio(r.head_dim),
            "ratio_padded_model": padded_ratio(r.head_dim),
            "spill_bytes": r.spill_bytes, "registers": r.registers,
        })
    return out


def format_markdown(table: Sequence[dict]) -> str:
    lines = ["| arch | kernel | head dim | tile (M x N, warps) | matrix instr. | measured / d64 | chunked (model) "
             "| padded (model) | regs | spill B |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        t = row["tile"]
        ratio = "n/a" if row["ratio_measured"] is None else f"{row['ratio_measured']:.2f}"
        lines.append(f"| {row['arch']} | {row['kernel']} | {row['head_dim']} | {t['BLOCK_M']} x {t['BLOCK_N']}, "
                     f"{t['num_warps']} | {row['matrix_instructions']} | {ratio} | {row['ratio_chunked_model']:.2f} "
                     f"| {row['ratio_padded_model']:.2f} | {row['registers']} | {row['spill_bytes']} |")
    return "\n".join(lines)
