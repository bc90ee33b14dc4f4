"""Overlapped (async) scheduling gives exactly the synchronous engine's outputs, on CPU.

Step N+1 is launched before step N's tokens reach the host; its unknown input ids are gathered
from step N's sampled tokens by the runner. Every observable result must be unchanged: token
ids (HF greedy parity), texts, finish and stop reasons, log-probabilities, seeded sampling,
n > 1, preemption and aborts.
"""

from __future__ import annotations

import pytest
from test_engine_parity import _engine_prompts, _token_ids

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.oracle import hf_greedy

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def _prompts(photos):
    a, c, k, rocket = photos["astronaut"], photos["chelsea"], photos["coffee"], photos["rocket"]
    return [
        ("USER: hello there, how are you?\nASSISTANT:", []),
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [k, c]),
        ("USER: tell me a story about a dog\nASSISTANT:", []),
        ("USER: <image>\nWhat colour?\nASSISTANT:", [rocket]),
        ("USER: <image>\nAgain?\nASSISTANT:", [a]),
    ]


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def model_case(request, tiny_llava_dir, tiny_llava_next_dir, photos):
    model_dir = tiny_llava_dir if request.param == "llava" else tiny_llava_next_dir
    prompts = _prompts(photos)
    expected = [hf_greedy(model_dir, p, imgs, MAX_TOKENS) for p, imgs in prompts]
    return model_dir, prompts, expected


def _summary(outputs):
    """Everything a caller sees of each completion but the log-probability values."""
    return [
        [
            (
                c.index,
                c.token_ids,
                c.text,
                c.finish_reason,
                c.stop_reason,
                [sorted(entry) for entry in c.logprobs] if c.logprobs is not None else None,
            )
            for c in o.outputs
        ]
        for o in outputs
    ]


def _assert_same_logprobs(a, b):
    # Requests join and leave batches one step later when overlapped, and CPU fp32 matmuls
    # round differently for other batch sizes: equal tokens, log-probs equal to ~1e-6.
    for out_a, out_b in zip(a, b):
        for comp_a, comp_b in zip(out_a.outputs, out_b.outputs):
            for entry_a, entry_b in zip(comp_a.logprobs or [], comp_b.logprobs or []):
                assert entry_a == pytest.approx(entry_b, abs=1e-4)


def test_async_is_the_default_only_on_cuda(tiny_llava_dir, photos):
    sync = Engine(tiny_llava_dir)
    assert sync.async_scheduling is False
    sync.generate(_engine_prompts(_prompts(photos))[:2], GREEDY, use_tqdm=False)
    assert sync.stats()["overlapped_steps"] == 0
    assert Engine(tiny_llava_dir, async_scheduling=True).async_scheduling is True


def test_async_greedy_matches_hf(model_case):
    model_dir, prompts, expected = model_case
    engine = Engine(model_dir, async_scheduling=True)
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected
    stats = engine.stats()
    assert stats["kv_blocks_used"] == 0
    # Decode steps took their input ids from the previous step's device tokens.
    assert stats["overlapped_steps"] >= MAX_TOKENS - 2
    assert engine._in_flight is None  # an idle engine holds no pending step


def _preempting_engine(model_dir, prompts, **kwargs):
    """An engine whose KV cache holds the longest request and a little more, so running
    requests run out of blocks and the newest are preempted."""
    probe = Engine(model_dir)
    longest = max(len(probe.inputs.process(p).token_ids) for p in prompts)
    block_bytes = kv_bytes_per_block(probe.model, 16, probe.config.dtype)
    blocks = -(-(longest + 12) // 16) + 2
    return Engine(
        model_dir,
        kv_cache_memory_bytes=blocks * block_bytes,
        max_num_batched_tokens=48,
        enable_prefix_caching=False,
        **kwargs,
    )


def test_async_preemption_and_chunked_prefill_match_hf(model_case):
    model_dir, prompts, expected = model_case
    engine = _preempting_engine(model_dir, _engine_prompts(prompts), async_scheduling=True)
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert engine.stats()["num_preemptions"] > 0
    assert _token_ids(outputs) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_async_preemption_keeps_seeded_sampling(model_case):
    model_dir, prompts, _ = model_case
    prompts = _engine_prompts(prompts)
    params = [
        SamplingParams(temperature=0.9, seed=100 + i, n=1 + i % 2, max_tokens=12, ignore_eos=True)
        for i in range(len(prompts))
    ]
    results = {}
    for overlap in (False, True):
        engine = _preempting_engine(model_dir, prompts, async_scheduling=overlap)
        outputs = engine.generate(prompts, params, use_tqdm=False)
        # Overlap changes when requests are preempted (one step later), not what they sample.
        assert engine.stats()["num_preemptions"] > 0
        results[overlap] = [[c.token_ids for c in o.outputs] for o in outputs]
    assert results[True] == results[False]


def _mixed_params(reference_texts, reference_ids):
    """Per prompt: stop strings, stop tokens, short max_tokens, seeded / unseeded sampling with
    n > 1 and log-probabilities, min_tokens; stops taken from the synchronous greedy outputs so
    they do fire mid-generation."""
    stop_text = reference_texts[0][len(reference_texts[0]) // 2 :][:3]
    return [
        SamplingParams(temperature=0.0, max_tokens=12, stop=[stop_text]),
        SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=[reference_ids[1][3]]),
        SamplingParams(temperature=0.0, max_tokens=3, logprobs=2),
        SamplingParams(temperature=0.9, top_p=0.9, seed=1234, n=3, max_tokens=10),
        SamplingParams(temperature=1.2, top_k=20, min_p=0.01, n=2, max_tokens=9, logprobs=1),
        SamplingParams(temperature=0.7, seed=7, max_tokens=11, min_tokens=6),
    ]


def test_async_matches_sync_for_stops_sampling_and_n(tiny_llava_dir, photos):
    prompts = _engine_prompts(_prompts(photos))
    reference = Engine(tiny_llava_dir, seed=3).generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False
    )
    params = _mixed_params(
        [o.outputs[0].text for o in reference], [o.outputs[0].token_ids for o in reference]
    )
    sync = Engine(tiny_llava_dir, seed=3).generate(prompts, params, use_tqdm=False)
    overlapped = Engine(tiny_llava_dir, seed=3, async_scheduling=True).generate(
        prompts, params, use_tqdm=False
    )
    assert _summary(overlapped) == _summary(sync)
    _assert_same_logprobs(overlapped, sync)
    reasons = {c.finish_reason for o in sync for c in o.outputs}
    assert reasons == {"stop", "length"}
    stops = [o.outputs[0].stop_reason for o in sync[:2]]
    assert isinstance(stops[0], str) and isinstance(stops[1], int)
    assert len(sync[0].outputs[0].token_ids) < 12 and len(sync[1].outputs[0].token_ids) == 4
    assert len({tuple(c.token_ids) for c in sync[3].outputs}) > 1  # n=3 samples differ


def _run_with_abort(engine, prompts, params, abort_id, abort_after_steps):
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    finished, steps = {}, 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        steps += 1
        if steps == abort_after_steps:
            engine.abort_request(abort_id)
    return finished


def test_async_abort_mid_flight(tiny_llava_dir, photos):
    prompts = _engine_prompts(_prompts(photos))
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    sync = Engine(tiny_llava_dir).generate(prompts, params, use_tqdm=False)
    engine = Engine(tiny_llava_dir, async_scheduling=True)
    # Step 4: the aborted request has a decode step in flight whose token must be dropped.
    finished = _run_with_abort(engine, prompts, params, "r2", abort_after_steps=4)
    assert "r2" not in finished
    for i, expected in enumerate(sync):
        if i != 2:
            assert finished[f"r{i}"].outputs[0].token_ids == expected.outputs[0].token_ids
    assert engine.stats()["kv_blocks_used"] == 0
    assert engine.stats()["encoder_referenced_entries"] == 0
    # The engine keeps serving after the abort, with the same results.
    again = engine.generate(prompts[:2], params, use_tqdm=False)
    assert _token_ids(again) == _token_ids(sync[:2])


def test_async_abort_of_every_request_leaves_the_engine_idle(tiny_llava_dir, photos):
    prompts = _engine_prompts(_prompts(photos))[:3]
    engine = Engine(tiny_llava_dir, async_scheduling=True)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"a{i}", prompt, params)
    engine.step()
    engine.step()  # a step is in flight now
    for i in range(len(prompts)):
        engine.abort_request(f"a{i}")
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0
    out = engine.generate(prompts[0], GREEDY, use_tqdm=False)
    assert (
        out[0].outputs[0].token_ids
        == Engine(tiny_llava_dir)
        .generate(prompts[0], GREEDY, use_tqdm=False)[0]
        .outputs[0]
        .token_ids
    )
