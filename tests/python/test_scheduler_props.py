"""Property tests of ``_core.Scheduler`` over random multimodal workloads.

Every workload runs through the simulated model of ``sched_sim`` with random arrivals, shared
images and prefixes, tiny KV caches (preemption), small token / encoder budgets (chunks that
stop before or run through images), chunked prefill on/off, prefix caching on/off, overlapped
scheduling on/off, M-RoPE positions and random aborts. Each request must end with exactly the
tokens of the scheduler-free reference; budgets hold every step; invariants hold after every
call; nothing leaks at the end.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_sim import VOCAB, SimModel, Spec, make_feature, reference_outputs

from mmcore import _core

PLACEHOLDER = 11
# identifier -> (length, mask or None): the same image always expands the same way.
IMAGES = {
    "img-a": (5, None),
    "img-b": (9, [0, 1, 1, 1, 0, 1, 1, 1, 0]),
    "img-c": (3, None),
    "img-d": (12, None),
}
SHARED_PREFIX = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]


@st.composite
def specs(draw, rid: int):
    tokens: list[int] = []
    if draw(st.booleans()):
        tokens += SHARED_PREFIX[: draw(st.integers(1, len(SHARED_PREFIX)))]
    items = []
    for _ in range(draw(st.integers(0, 3))):
        tokens += draw(st.lists(st.integers(0, VOCAB - 2), max_size=5))
        identifier = draw(st.sampled_from(sorted(IMAGES)))
        length, mask = IMAGES[identifier]
        items.append((identifier, len(tokens), length, mask))
        tokens += [PLACEHOLDER] * length
    tokens += draw(st.lists(st.integers(0, VOCAB - 2), min_size=1 if not tokens else 0, max_size=6))
    mrope = None
    delta = 0
    if draw(st.integers(0, 3)) == 0:
        mrope = np.array(
            [
                draw(st.lists(st.integers(0, 40), min_size=len(tokens), max_size=len(tokens)))
                for _ in range(3)
            ],
            dtype=np.int64,
        )
        delta = draw(st.integers(-5, 5))
    max_tokens = draw(st.integers(1, 12))
    return Spec(
        rid=rid,
        tokens=tokens,
        items=items,
        max_tokens=max_tokens,
        min_tokens=draw(st.integers(0, min(2, max_tokens))),
        eos=draw(st.lists(st.integers(0, VOCAB - 1), max_size=1)),
        stop=draw(st.lists(st.integers(0, VOCAB - 1), max_size=1)),
        ignore_eos=draw(st.booleans()),
        priority=draw(st.integers(0, 2)),
        salt=draw(st.sampled_from(["", "", "tenant"])),
        mrope=mrope,
        mrope_delta=delta,
    )


def add(sched, spec: Spec) -> None:
    features = [make_feature(i, o, n, m) for i, o, n, m in spec.items]
    sched.add_request(
        spec.rid,
        np.array(spec.tokens, dtype=np.int32),
        features,
        max_tokens=spec.max_tokens,
        min_tokens=spec.min_tokens,
        eos_token_ids=spec.eos,
        stop_token_ids=spec.stop,
        ignore_eos=spec.ignore_eos,
        priority=spec.priority,
        cache_salt=spec.salt,
        mrope_positions=spec.mrope,
        mrope_delta=spec.mrope_delta,
    )


def run_workload(cfg, specs_by_arrival, overlap: bool, aborts: dict[int, int]):
    """Drives the scheduler to completion; returns {rid: (tokens, reason)} and the stats."""
    sched = _core.Scheduler(cfg)
    specs = {s.rid: s for _, s in specs_by_arrival}
    model = SimModel(specs, cfg.block_size, tuple(cfg.kv_group_windows))
    outputs = {rid: [] for rid in specs}
    reasons: dict[int, str] = {}
    pending = sorted(specs_by_arrival, key=lambda x: x[0])
    in_flight = None
    step = 0

    def apply(res):
        for rid, tok in zip(res.req_ids.tolist(), res.token_ids.tolist()):
            assert rid not in reasons, f"request {rid} got a token after finishing"
            outputs[rid].append(tok)
        for rid, why in zip(res.finished_req_ids.tolist(), res.finish_reasons):
            reasons[rid] = why

    added = set()
    while pending or sched.has_unfinished_requests() or in_flight is not None:
        assert step < 3000, "scheduler made no progress"
        while pending and pending[0][0] <= step:
            spec = pending.pop(0)[1]
            add(sched, spec)
            added.add(spec.rid)
        for rid, at in aborts.items():
            if at <= step and rid in added and rid not in reasons:
                sched.finish_request(rid, "abort")
                if rid not in reasons:
                    reasons[rid] = "abort"
        out = sched.schedule()
        sched.check_invariants()
        assert out.num_tokens <= cfg.max_num_batched_tokens
        assert out.num_reqs <= cfg.max_num_seqs
        assert len(set(out.req_ids.tolist())) == out.num_reqs
        embeds = sum(
            specs[r].items[i][2] if specs[r].items[i][3] is None else sum(specs[r].items[i][3])
            for r, i in zip(out.encoder_req_ids.tolist(), out.encoder_item_indices.tolist())
        )
        assert embeds <= cfg.encoder_budget
        assert np.array_equal(out.seq_lens, out.num_computed_tokens + out.num_scheduled_tokens)
        assert out.query_start_loc[-1] == out.num_tokens
        if overlap:
            if in_flight is not None:
                apply(sched.update_from_output(*in_flight))
                sched.check_invariants()
            sampled = model.execute(out)
            in_flight = (out, sampled) if out.num_reqs else None
        else:
            assert not np.any(out.input_ids == -1)
            sampled = model.execute(out)
            apply(sched.update_from_output(out, sampled))
            sched.check_invariants()
        step += 1
    stats = sched.stats()
    assert stats["kv_blocks_used"] == 0, "blocks leaked"
    assert stats["encoder_referenced_entries"] == 0, "encoder references leaked"
    assert not sched.has_unfinished_requests()
    return {rid: (outputs[rid], reasons.get(rid)) for rid in specs}, stats


def would_reject(spec: Spec, cfg) -> bool:
    n = len(spec.tokens)
    final = min(n + spec.max_tokens, cfg.max_model_len)
    if n > cfg.max_model_len or -(-final // cfg.block_size) > cfg.num_blocks:
        return True
    sizes = {i: (n_ if m is None else sum(m)) for i, _, n_, m in spec.items}
    if any(v > min(cfg.encoder_budget, cfg.encoder_cache_size) for v in sizes.values()):
        return True
    if not cfg.enable_chunked_prefill:
        total = sum(sizes.values())
        if n > cfg.max_num_batched_tokens or total > min(
            cfg.encoder_budget, cfg.encoder_cache_size
        ):
            return True
    return False


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_workloads_match_the_reference(data):
    cfg = _core.SchedulerConfig()
    cfg.block_size = data.draw(st.sampled_from([2, 4, 8]), label="block_size")
    cfg.max_model_len = data.draw(st.integers(24, 80), label="max_model_len")
    cfg.max_num_batched_tokens = data.draw(st.integers(3, 48), label="token_budget")
    cfg.max_num_seqs = data.draw(st.integers(1, 6), label="max_num_seqs")
    cfg.enable_prefix_caching = data.draw(st.booleans(), label="prefix_caching")
    cfg.enable_chunked_prefill = data.draw(st.integers(0, 3), label="chunked") > 0
    cfg.encoder_budget = data.draw(st.integers(9, 30), label="encoder_budget")
    cfg.encoder_cache_size = data.draw(st.integers(9, 40), label="encoder_cache")
    overlap = data.draw(st.booleans(), label="overlap")
    n = data.draw(st.integers(1, 8), label="num_requests")
    workload = []
    for rid in range(n):
        arrival = data.draw(st.integers(0, 8), label="arrival")
        if workload and data.draw(st.integers(0, 3), label="clone") == 0:
            # Same prompt and images as an earlier request: prefix-cache and encoder hits.
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
        if would_reject(spec, cfg):
            with pytest.raises(ValueError):
                add(probe, spec)
        else:
            accepted.append((at, spec))
    aborts = {}
    if accepted and data.draw(st.booleans(), label="abort"):
        aborts[data.draw(st.sampled_from([s.rid for _, s in accepted]))] = data.draw(
            st.integers(0, 20)
        )
    results, _ = run_workload(cfg, accepted, overlap, aborts)
    for _, spec in accepted:
        want, why = reference_outputs(spec, cfg.max_model_len)
        got, got_why = results[spec.rid]
        if spec.rid in aborts and got_why == "abort":
            assert got == want[: len(got)], f"request {spec.rid} diverged before its abort"
        else:
            assert (got, got_why) == (want, why), f"request {spec.rid}"


def test_prefix_caching_and_shared_images_hit():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = 64
    cfg.block_size = 4
    spec = Spec(
        rid=0,
        tokens=[1, 2] + [PLACEHOLDER] * 12 + [3, 4, 5],
        items=[("img-d", 2, 12, None)],
        max_tokens=3,
    )
    twin = Spec(rid=1, tokens=list(spec.tokens), items=list(spec.items), max_tokens=3)
    other = Spec(rid=2, tokens=list(spec.tokens), items=[("img-x", 2, 12, None)], max_tokens=3)
    results, stats = run_workload(cfg, [(0, spec), (5, twin), (10, other)], False, {})
    assert stats["prefix_hits"] == 16  # the twin reuses 4 full blocks; the other image none
    assert stats["encoder_hits"] >= 0
    for s in (spec, twin, other):
        assert results[s.rid] == reference_outputs(s, cfg.max_model_len)


def test_overlap_marks_pending_tokens_and_drops_finished():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = 16
    cfg.block_size = 4
    sched = _core.Scheduler(cfg)
    sched.add_request(7, np.array([1, 2, 3], dtype=np.int32), [], max_tokens=5)
    sched.add_request(8, np.array([4, 5], dtype=np.int32), [], max_tokens=5)
    first = sched.schedule()
    assert first.sampling_req_ids.tolist() == [7, 8]
    second = sched.schedule()  # before update_from_output(first)
    assert second.input_ids.tolist() == [-1, -1]
    assert second.prev_sample_index.tolist() == [0, 1]
    assert second.positions.tolist() == [3, 2]
    with pytest.raises(RuntimeError, match="at most one step"):
        sched.schedule()
    res = sched.update_from_output(first, np.array([9, 9], dtype=np.int32))
    assert res.req_ids.tolist() == [7, 8]
    sched.finish_request(8, "abort")
    res = sched.update_from_output(second, np.array([1, 2], dtype=np.int32))
    assert res.req_ids.tolist() == [7]  # 8 was aborted: its token is dropped
    third = sched.schedule()
    assert third.finished_req_ids.tolist() == [8]
    assert third.req_ids.tolist() == [7]
    assert third.input_ids.tolist() == [1]
    sched.check_invariants()


def test_mrope_positions_are_three_rows():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = 8
    sched = _core.Scheduler(cfg)
    mrope = np.array([[0, 1, 1, 3], [0, 1, 2, 3], [0, 2, 1, 3]], dtype=np.int64)
    sched.add_request(
        1,
        np.array([5, 6, 6, 7], dtype=np.int32),
        [],
        max_tokens=3,
        mrope_positions=mrope,
        mrope_delta=-1,
    )
    sched.add_request(2, np.array([5, 6], dtype=np.int32), [], max_tokens=3)
    out = sched.schedule()
    assert out.position_dims == 3
    assert out.positions.tolist() == [[0, 1, 1, 3, 0, 1], [0, 1, 2, 3, 0, 1], [0, 2, 1, 3, 0, 1]]
    sched.update_from_output(out, np.array([1, 1], dtype=np.int32))
    out = sched.schedule()
    assert out.positions[:, 0].tolist() == [3, 3, 3]  # generated token 4 sits at 4 - 1


@pytest.mark.parametrize(
    ("tokens", "kwargs", "match"),
    [
        (list(range(50)), {}, "longer than max_model_len"),
        ([1] * 30, {"max_tokens": 20}, "more than the whole cache"),
        ([], {}, "empty"),
        ([1, 2, 3], {"min_tokens": 9}, "min_tokens"),
        ([1, -1, 3], {}, "negative"),
    ],
)
def test_requests_that_never_fit_are_value_errors(tokens, kwargs, match):
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = 2
    cfg.block_size = 16
    cfg.max_model_len = 40
    sched = _core.Scheduler(cfg)
    with pytest.raises(ValueError, match=match):
        sched.add_request(0, np.array(tokens, dtype=np.int32), [], **{"max_tokens": 4, **kwargs})
    assert not sched.has_unfinished_requests()


def test_bad_items_and_duplicates_are_value_errors():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = 16
    cfg.encoder_budget = 4
    sched = _core.Scheduler(cfg)
    toks = np.zeros(10, dtype=np.int32)
    with pytest.raises(ValueError, match="encoder budget"):
        sched.add_request(0, toks, [make_feature("big", 0, 8)], max_tokens=1)
    with pytest.raises(ValueError, match="past the prompt"):
        sched.add_request(0, toks, [make_feature("x", 8, 4)], max_tokens=1)
    with pytest.raises(ValueError, match="overlaps"):
        sched.add_request(0, toks, [make_feature("x", 0, 3), make_feature("y", 2, 2)], max_tokens=1)
    sched.add_request(0, toks, [], max_tokens=1)
    with pytest.raises(ValueError, match="already exists"):
        sched.add_request(0, toks, [], max_tokens=1)
    with pytest.raises(ValueError, match="finish reason"):
        sched.finish_request(0, "bored")
