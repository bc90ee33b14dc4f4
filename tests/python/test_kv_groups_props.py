"""Property tests of ``_core.Scheduler`` with KV cache groups (hybrid models such as Gemma 3).

The random multimodal workloads of ``test_scheduler_props`` run with a full group plus sliding
(and sometimes a second full) group: the simulated model reads each group's oldest visible key
through that group's own table, so a block released while its window still needs it, a wrong
group slot or a prefix-cache hit with wrong content changes the tokens. ``check_invariants()``
holds after every call, nothing leaks, and long requests release their out-of-window blocks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_sim import Spec, reference_outputs
from test_scheduler_props import add, run_workload, specs

from mmcore import _core


def blocks_needed(spec: Spec, cfg) -> int:
    """The most blocks the request holds at once (what the core's request check computes)."""
    final = min(len(spec.tokens) + spec.max_tokens, cfg.max_model_len)
    per_group = -(-final // cfg.block_size)
    total = 0
    for window in cfg.kv_group_windows:
        held = (cfg.max_num_batched_tokens + window + cfg.block_size - 1) // cfg.block_size + 1
        total += per_group if window <= 0 else min(per_group, held)
    return total


def would_reject(spec: Spec, cfg) -> bool:
    n = len(spec.tokens)
    if n > cfg.max_model_len or blocks_needed(spec, cfg) > cfg.num_blocks:
        return True
    if not cfg.chunk_inside_mm_items and any(
        length > cfg.max_num_batched_tokens for _, _, length, _ in spec.items
    ):
        return True
    sizes = {i: (n_ if m is None else sum(m)) for i, _, n_, m in spec.items}
    if any(v > min(cfg.encoder_budget, cfg.encoder_cache_size) for v in sizes.values()):
        return True
    budget = min(cfg.encoder_budget, cfg.encoder_cache_size)
    return not cfg.enable_chunked_prefill and (
        n > cfg.max_num_batched_tokens or sum(sizes.values()) > budget
    )


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_workloads_with_sliding_groups_match_the_reference(data):
    cfg = _core.SchedulerConfig()
    cfg.block_size = data.draw(st.sampled_from([2, 4]), label="block_size")
    window = data.draw(st.integers(2, 10), label="window")
    cfg.kv_group_windows = data.draw(
        st.sampled_from([[-1, window], [-1, window, window], [-1, -1, window]]), label="groups"
    )
    cfg.max_model_len = data.draw(st.integers(24, 80), label="max_model_len")
    cfg.max_num_batched_tokens = data.draw(st.integers(3, 24), label="token_budget")
    cfg.max_num_seqs = data.draw(st.integers(1, 5), label="max_num_seqs")
    cfg.enable_prefix_caching = data.draw(st.integers(0, 3), label="prefix_caching") > 0
    cfg.enable_chunked_prefill = data.draw(st.integers(0, 3), label="chunked") > 0
    cfg.chunk_inside_mm_items = data.draw(st.booleans(), label="chunk_inside_items")
    cfg.encoder_budget = data.draw(st.integers(12, 30), label="encoder_budget")
    cfg.encoder_cache_size = data.draw(st.integers(12, 40), label="encoder_cache")
    overlap = data.draw(st.booleans(), label="overlap")
    workload = []
    for rid in range(data.draw(st.integers(1, 7), label="num_requests")):
        arrival = data.draw(st.integers(0, 8), label="arrival")
        if workload and data.draw(st.integers(0, 2), label="clone") == 0:
            # Same prompt and images as an earlier request: prefix-cache hits in every group.
            spec = dataclasses.replace(data.draw(st.sampled_from(workload))[1], rid=rid)
        else:
            spec = data.draw(specs(rid), label="spec")
            # Long tails run far past the window.
            spec.tokens += data.draw(st.lists(st.integers(0, 9), max_size=30), label="tail")
            spec.mrope = None
        workload.append((arrival, spec))
    need = max(blocks_needed(s, cfg) for _, s in workload)
    cfg.num_blocks = max(1, need + data.draw(st.integers(-1, 6), label="extra_blocks"))
    accepted = []
    probe = _core.Scheduler(cfg)
    for at, spec in workload:
        if would_reject(spec, cfg):
            with pytest.raises(ValueError):
                add(probe, spec)
        else:
            add(probe, spec)  # accepted by the core too
            accepted.append((at, spec))
    aborts = {}
    if accepted and data.draw(st.booleans(), label="abort"):
        aborts[data.draw(st.sampled_from([s.rid for _, s in accepted]))] = data.draw(
            st.integers(0, 20)
        )
    results, stats = run_workload(cfg, accepted, overlap, aborts)
    assert stats["num_kv_groups"] == len(cfg.kv_group_windows)
    windows = tuple(cfg.kv_group_windows)
    for _, spec in accepted:
        want, why = reference_outputs(spec, cfg.max_model_len, windows)
        got, got_why = results[spec.rid]
        if spec.rid in aborts and got_why == "abort":
            assert got == want[: len(got)], f"request {spec.rid} diverged before its abort"
        else:
            assert (got, got_why) == (want, why), f"request {spec.rid}"


def test_long_request_releases_out_of_window_blocks_and_hits_the_prefix_cache():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks, cfg.block_size, cfg.max_num_batched_tokens = 200, 4, 8
    cfg.kv_group_windows = [-1, 6, 6]
    tokens = [int(t) for t in np.arange(60) % 10]
    first = Spec(rid=0, tokens=tokens, items=[], max_tokens=12)
    twin = Spec(rid=1, tokens=list(tokens), items=[], max_tokens=12)
    results, stats = run_workload(cfg, [(0, first), (40, twin)], True, {})
    assert stats["num_sliding_blocks_freed"] > 2 * (60 // 4 - 4)
    assert stats["prefix_hits"] >= 56  # the twin reuses every full block in every group
    for spec in (first, twin):
        assert results[spec.rid] == reference_outputs(spec, cfg.max_model_len, (-1, 6, 6))


def test_group_tables_travel_in_the_tensor_parallel_step_message():
    from mmcore.executor.step_codec import KIND_STEP, decode, encode_step

    cfg = _core.SchedulerConfig()
    cfg.num_blocks, cfg.block_size, cfg.max_num_batched_tokens = 64, 4, 8
    cfg.kv_group_windows = [-1, 4, 4]
    sched = _core.Scheduler(cfg)
    for rid in range(2):
        sched.add_request(rid, np.arange(30, dtype=np.int32) + rid, [], max_tokens=3)
    for _ in range(3):  # past the window: the sliding tables have -1 entries
        out = sched.schedule()
        sched.update_from_output(out, np.zeros(len(out.sampling_req_ids), dtype=np.int32))
    out = sched.schedule()
    assert (out.group_block_tables == -1).any()
    parts = encode_step(out, {})
    kind, step = decode(b"".join(bytes(memoryview(p)) for p in parts))
    assert kind == KIND_STEP and step.num_kv_groups == 3
    assert np.array_equal(step.group_block_tables, out.group_block_tables)
    assert np.array_equal(step.group_slot_mapping, out.group_slot_mapping)
    assert step.group_block_tables.shape == (2 * out.num_reqs, out.max_blocks_per_req)
    # Rows are request-major: request i's group g at i * 2 + g - 1; group 0 is block_tables.
    assert (out.group_block_tables[0::2] != out.group_block_tables[1::2]).any()
