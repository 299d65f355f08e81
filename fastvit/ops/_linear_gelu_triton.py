"""Triton path of the linear_gelu ops (placeholder until the kernel lands)."""

def triton_linear_gelu(*args, **kwargs):
    raise NotImplementedError("backend=\"triton\" for linear_gelu: the Triton kernel has not landed yet; use backend=\"sdpa\" or \"eager\"")


