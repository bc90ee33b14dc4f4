"""Attention and KV-cache ops: CUDA kernels where available, pure-torch references elsewhere."""
