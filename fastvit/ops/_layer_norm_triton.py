"""Triton path of the layer_norm ops (placeholder until the kernel lands)."""

def triton_layer_norm(*args, **kwargs):
    raise NotImplementedError("backend=\"triton\" for layer_norm: the Triton kernel has not landed yet; use backend=\"sdpa\" or \"eager\"")


def triton_add_layer_norm(*args, **kwargs):
    raise NotImplementedError("backend=\"triton\" for layer_norm: the Triton kernel has not landed yet; use backend=\"sdpa\" or \"eager\"")


