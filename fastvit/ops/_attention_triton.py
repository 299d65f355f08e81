"""Triton path of the attention ops (placeholder until the kernel lands)."""

def triton_attention(*args, **kwargs):
    raise NotImplementedError("backend=\"triton\" for attention: the Triton kernel has not landed yet; use backend=\"sdpa\" or \"eager\"")


def triton_qkv_attention(*args, **kwargs):
    raise NotImplementedError("backend=\"triton\" for attention: the Triton kernel has not landed yet; use backend=\"sdpa\" or \"eager\"")


