"""Property test of ``SchedulerConfig.chunk_inside_mm_items = False`` (models whose item tokens
attend to each other both ways, e.g. Gemma 3): over random workloads (chunked prefill, tiny KV
caches with preemption and recompute, prefix caching, overlapped steps, aborts) no step's chunk
ends inside an item, invariants hold after every call, budgets hold, and every request gets
exactly the tokens of the scheduler-free reference (the workload runner of
test_scheduler_props)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_scheduler_props import add, reference_outputs, run_workload, specs, would_reject

from mmcore import _core


class _RecordingScheduler(_core.Scheduler):
    """Records (request id, chunk end) of every scheduled step and each request's items."""

    runs: list = []

    def __init__(self, cfg):
        super().__init__(cfg)
        self.items: dict[int, list[tuple[int, int]]] = {}
        self.ends: list[tuple[int, int]] = []
        _RecordingScheduler.runs.append(self)

    def add_request(self, request_id, token_ids, features, **kwargs):
        super().add_request(request_id, token_ids, features, **kwargs)
        self.items[request_id] = [(f.offset, f.offset + f.length) for f in features]

    def schedule(self):
        out = super().schedule()
        self.ends += list(zip(out.req_ids.tolist(), out.seq_lens.tolist()))
        return out


@contextlib.contextmanager
def _recording():
    original = _core.Scheduler
    _core.Scheduler = _RecordingScheduler
    _RecordingScheduler.runs = []
    try:
        yield _RecordingScheduler.runs
    finally:
        _core.Scheduler = original


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_chunks_never_end_inside_an_item(data):
    cfg = _core.SchedulerConfig()
    cfg.chunk_inside_mm_items = False
    cfg.block_size = data.draw(st.sampled_from([2, 4, 8]), label="block_size")
    cfg.max_model_len = data.draw(st.integers(24, 80), label="max_model_len")
    cfg.max_num_batched_tokens = data.draw(st.integers(12, 40), label="token_budget")
    cfg.max_num_seqs = data.draw(st.integers(1, 6), label="max_num_seqs")
    cfg.enable_prefix_caching = data.draw(st.booleans(), label="prefix_caching")
    cfg.encoder_budget = data.draw(st.integers(12, 30), label="encoder_budget")
    cfg.encoder_cache_size = data.draw(st.integers(12, 40), label="encoder_cache")
    overlap = data.draw(st.booleans(), label="overlap")
    workload = []
    for rid in range(data.draw(st.integers(1, 7), label="num_requests")):
        arrival = data.draw(st.integers(0, 8), label="arrival")
        if workload and data.draw(st.integers(0, 3), label="clone") == 0:
            spec = dataclasses.replace(data.draw(st.sampled_from(workload))[1], rid=rid)
        else:
            spec = data.draw(specs(rid), label="spec")
        workload.append((arrival, spec))
    need = max(
        -(-min(len(s.tokens) + s.max_tokens, cfg.max_model_len) // cfg.block_size)
        for _, s in workload
    )
    cfg.num_blocks = max(1, need + data.draw(st.integers(-1, 4), label="extra_blocks"))
    accepted = []
    probe = _core.Scheduler(cfg)
    for at, spec in workload:
        too_long = any(length > cfg.max_num_batched_tokens for _, _, length, _ in spec.items)
        if would_reject(spec, cfg) or too_long:
            with pytest.raises(ValueError):
                add(probe, spec)
        else:
            accepted.append((at, spec))
    aborts = {}
    if accepted and data.draw(st.booleans(), label="abort"):
        aborts[data.draw(st.sampled_from([s.rid for _, s in accepted]))] = data.draw(
            st.integers(0, 20)
        )
    with _recording() as runs:
        results, _ = run_workload(cfg, accepted, overlap, aborts)
    (sched,) = runs
    cuts = [
        (rid, end)
        for rid, end in sched.ends
        if any(start < end < stop for start, stop in sched.items[rid])
    ]
    assert cuts == [], f"chunks ended inside items: {cuts}"
    for _, spec in accepted:
        want, why = reference_outputs(spec, cfg.max_model_len)
        got, got_why = results[spec.rid]
        if spec.rid in aborts and got_why == "abort":
            assert got == want[: len(got)]
        else:
            assert (got, got_why) == (want, why), f"request {spec.rid}"
