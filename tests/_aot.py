"""Shared checks on ahead-of-time compile reports (fastvit.profiling.compile_report)."""


def check_fits(specs, reports, arch):
    """Every spec compiled for ``arch``, without register spills and within shared memory."""
    mine = [r for r in reports if r.arch == arch]
    assert len(mine) == len(specs)
    spilled = [(r.name, r.spill_bytes) for r in mine if r.spill_bytes]
    assert not spilled, f"sm_{arch}: register spills {spilled}"
    too_big = [(r.name, r.shared_bytes, r.shared_limit) for r in mine if r.shared_bytes > r.shared_limit]
    assert not too_big, f"sm_{arch}: shared memory over the limit {too_big}"
    return mine
