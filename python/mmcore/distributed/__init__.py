"""Tensor parallelism: the process group of the model's ranks and its collectives."""
