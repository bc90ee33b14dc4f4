"""Helpers for tests and benchmarks: tiny seeded HF checkpoints and paged-batch builders."""
