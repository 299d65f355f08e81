"""fastvit's Triton kernels and their launchers (installed as ``fastvit.kernels``).

Triton only: no autograd here. Launchers take tensors, validate shapes they rely on, pick a
grid and a configuration, and return tensors; ``fastvit.ops`` wraps them for autograd.
"""
