"""Executors: where the model runs. ``uni`` in the engine's process; ``mp`` in one spawned
worker process per tensor-parallel rank, fed through a shared-memory broadcast queue."""
