"""Shared checks on ahead-of-time compile reports (fastvit.profiling.compile_report)."""
from fastvit.profiling.arch_limits import arch_name


def check_fits(specs, reports, arch):
    """Every spec compiled for ``arch`` (80, "sm_80", "gfx942"), without register spills and within
    shared memory."""
    arch = arch_name(arch)
    mine = [r for r in reports if r.arch == arch]
    assert len(mine) == len(specs), f"{arch}: {len(mine)} reports for {len(specs)} specs"
    spilled = [(r.name, r.spill_bytes) for r in mine if r.spill_bytes]
    assert not spilled, f"{arch}: register spills {spilled}"
    too_big = [(r.name, r.shared_bytes, r.shared_limit) for r in mine if r.shared_bytes > r.shared_limit]
    assert not too_big, f"{arch}: shared memory over the limit {too_big}"
    return mine
