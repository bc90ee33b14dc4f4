"""Benchmarks: random multimodal load against a server (``mmcore bench serve``) or offline
through ``Engine.generate`` (``mmcore bench offline``).

Modules: ``workload`` (random requests), ``stats`` (summaries), ``serve_client`` (the HTTP
load generator), ``offline`` (the Engine run), ``cli`` (the commands).
"""
