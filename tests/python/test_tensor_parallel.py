"""Tensor parallelism on CPU: 2 worker processes over gloo (executor "mp").

One engine per configuration (module scope, workers are slow to start on a 2-core box):
- GQA with 2 KV heads (split 1 + 1 over the ranks), vision encoder sharded by heads;
- 1 KV head (replicated on both ranks), vision encoder data-parallel (mm_encoder_tp_mode="data").
Each runs 8 prompts with chunked prefill cutting through images, prefix caching, preemption and
async scheduling; greedy tokens must equal HF's and the single-process engine's. The last tests
kill (SIGKILL) or freeze (SIGSTOP) a worker mid-generation: the engine must raise naming the
rank within 30 s and leave no worker process behind.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from test_engine_parity import _engine_prompts, _token_ids

from mmcore import Engine, SamplingParams, StructuredOutputsParams
from mmcore.executor.base import WorkerFailedError
from mmcore.testing.oracle import hf_greedy
from mmcore.testing.tiny_checkpoints import build_tiny_llava

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
BLOCK_SIZE = 16


def _prompts(photos):
    a, c, k, r, cam = (photos[n] for n in ("astronaut", "chelsea", "coffee", "rocket", "camera"))
    return [
        ("USER: hello there, how are you?\nASSISTANT:", []),
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [k, c]),
        ("USER: tell me a story about a dog\nASSISTANT:", []),
        ("USER: <image>\nWhat colour?\nASSISTANT:", [r]),
        ("USER: <image>\nAgain?\nASSISTANT:", [a]),
        ("USER: <image>\nDescribe the picture in detail.\nASSISTANT:", [cam]),
        ("USER: Numbers 0 1 2 3 and punctuation, please.\nASSISTANT:", []),
    ]


def _kv_bytes_per_block(num_kv_heads: int, tp: int) -> int:
    """Per-rank bytes of one KV block of the tiny LLaVA LM (2 layers, head dim 16, fp32)."""
    local_heads = max(1, num_kv_heads // tp)
    return 2 * 2 * BLOCK_SIZE * local_heads * 16 * 4


CASES = {
    # name: (KV heads, mm_encoder_tp_mode, how its last test breaks rank 1)
    "kv2_encoder_sharded": (2, "weights", signal.SIGKILL),
    "kv1_replicated_encoder_data": (1, "data", signal.SIGSTOP),
}


@pytest.fixture(scope="module", params=list(CASES))
def tp_case(request, tmp_path_factory, photos):
    num_kv_heads, encoder_mode, fault_signal = CASES[request.param]
    model_dir = build_tiny_llava(
        tmp_path_factory.mktemp(request.param),
        seed=0,
        text_overrides={"num_key_value_heads": num_kv_heads},
    )
    prompts = _prompts(photos)
    expected = [hf_greedy(model_dir, p, imgs, MAX_TOKENS) for p, imgs in prompts]
    # A cache that holds the longest request and a little more: the newest are preempted.
    blocks = 8
    options = dict(
        max_num_batched_tokens=48,  # chunks cut through the 16-token images
        enable_prefix_caching=True,
        async_scheduling=True,
        block_size=BLOCK_SIZE,
    )
    engine = Engine(
        model_dir,
        tensor_parallel_size=2,
        mm_encoder_tp_mode=encoder_mode,
        kv_cache_memory_bytes=blocks * _kv_bytes_per_block(num_kv_heads, 2),
        **options,
    )
    single = dict(options, kv_cache_memory_bytes=blocks * _kv_bytes_per_block(num_kv_heads, 1))
    yield model_dir, engine, single, _engine_prompts(prompts), expected, fault_signal
    engine.shutdown()


def test_tp2_greedy_matches_hf_and_tp1(tp_case):
    model_dir, engine, single_options, prompts, expected, _ = tp_case
    assert engine.config.num_blocks == 8
    outputs = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_used"] == 0
    # An image prompt, then it again beside another on the same image: prefix-cache hits
    # (block keys include the image) keep the tokens.
    hits = stats["prefix_hits"]
    assert _token_ids(engine.generate([prompts[1]], GREEDY, use_tqdm=False)) == [expected[1]]
    again = engine.generate([prompts[1], prompts[5]], GREEDY, use_tqdm=False)
    assert _token_ids(again) == [expected[1], expected[5]]
    assert engine.stats()["prefix_hits"] > hits
    single = Engine(model_dir, **single_options)
    assert single.config.num_blocks == 8
    assert _token_ids(single.generate(prompts, GREEDY, use_tqdm=False)) == expected


# Penalties and min_tokens keep per-request counts on each worker's device; seeded draws.
SAMPLED = SamplingParams(
    temperature=0.9,
    top_k=20,
    seed=11,
    repetition_penalty=1.3,
    presence_penalty=0.4,
    frequency_penalty=0.3,
    min_tokens=6,
    max_tokens=MAX_TOKENS,
    logprobs=1,
)
# Host masks computed on the driver travel with each step to the workers.
CHOICES = ["yes", "no", "maybe not"]
HOST_MASKED = [
    SamplingParams(
        max_tokens=16, temperature=0.0, structured_outputs=StructuredOutputsParams(choice=CHOICES)
    ),
    SamplingParams(
        max_tokens=12,
        temperature=0.8,
        seed=5,
        structured_outputs=StructuredOutputsParams(regex="[a-d]{2,5}-[0-9]{1,3}"),
    ),
    SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.7, seed=3, bad_words=["the picture", "a dog story"]
    ),
]


def test_tp2_sampling_matches_tp1_with_grammars_and_bans(tp_case):
    model_dir, engine, single_options, prompts, _, _ = tp_case
    single = Engine(model_dir, **single_options)
    _assert_prompt_logprobs_match_tp1(engine, single, prompts)
    tp_outputs = engine.generate(prompts[:4], SAMPLED, use_tqdm=False)
    assert _token_ids(tp_outputs) == _token_ids(
        single.generate(prompts[:4], SAMPLED, use_tqdm=False)
    )
    assert all(len(o.outputs[0].logprobs) == len(o.outputs[0].token_ids) for o in tp_outputs)
    # Each prompt under each host-masked parameter set, all in one batch (async scheduling).
    batch = [p for p in prompts[:4] for _ in HOST_MASKED]
    params = HOST_MASKED * 4
    tp_outputs = engine.generate(batch, params, use_tqdm=False)
    assert _token_ids(tp_outputs) == _token_ids(single.generate(batch, params, use_tqdm=False))
    done = [(o.outputs[0].text, o.outputs[0].finish_reason) for o in tp_outputs]
    assert all(text in CHOICES and reason == "stop" for text, reason in done[0::3]), done
    for text, reason in done[1::3]:  # whole, or cut by max_tokens inside the pattern
        pattern = "[a-d]{2,5}-[0-9]{1,3}" if reason == "stop" else "[a-d]{0,5}(-[0-9]{0,3})?"
        assert re.fullmatch(pattern, text), (text, reason)
    assert engine.stats()["kv_blocks_used"] == 0


def _prompt_logprobs(outputs):
    """Per request, per prompt position: None (the first) or {token: (logprob, rank)}."""
    return [
        [
            None if pos is None else {t: (lp.logprob, lp.rank) for t, lp in pos.items()}
            for pos in o.prompt_logprobs
        ]
        for o in outputs
    ]


def _assert_prompt_logprobs_match_tp1(engine, single, prompts):
    """Rank 0 computes the prompt log-probabilities (every rank joins the logits gather) and
    returns them with the step's tokens; chunks cut through the images and prompts."""
    params = [
        SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=k, logprobs=k)
        for k in (0, 3, 1, 5)
    ]
    tp_outputs = engine.generate(prompts[:4], params, use_tqdm=False)
    one_outputs = single.generate(prompts[:4], params, use_tqdm=False)
    assert _token_ids(tp_outputs) == _token_ids(one_outputs)
    for tp, one, param in zip(
        _prompt_logprobs(tp_outputs), _prompt_logprobs(one_outputs), params, strict=True
    ):
        assert len(tp) == len(one) > 16 and tp[0] is None and one[0] is None
        for tp_pos, one_pos in zip(tp[1:], one[1:], strict=True):
            # the prompt token and the top k, with the same ranks
            assert tp_pos.keys() == one_pos.keys()
            assert param.prompt_logprobs <= len(tp_pos) <= param.prompt_logprobs + 1
            for token, (logprob, rank) in tp_pos.items():
                assert rank == one_pos[token][1]
                assert abs(logprob - one_pos[token][0]) <= 1e-5
    assert engine.stats()["kv_blocks_used"] == 0


def test_tp2_profile_writes_every_ranks_trace(tp_case, tmp_path, monkeypatch):
    _, engine, _, prompts, expected, _ = tp_case
    monkeypatch.setenv("MMCORE_TORCH_PROFILER_DIR", str(tmp_path))
    engine.start_profile()
    assert _token_ids(engine.generate([prompts[0]], GREEDY, use_tqdm=False)) == [expected[0]]
    engine.stop_profile()  # returns once both ranks wrote their files
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}_summary.txt") as f:
            assert "aten::mm" in f.read()
        assert (tmp_path / f"rank{rank}_trace.json").stat().st_size > 1000
    assert "engine.py" in (tmp_path / "driver_summary.txt").read_text()  # the engine's thread
    assert _token_ids(engine.generate([prompts[1]], GREEDY, use_tqdm=False)) == [expected[1]]


def _step_until_failure(engine, prompts, fault) -> tuple[WorkerFailedError, float]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"fault-{i}", prompt, SamplingParams(max_tokens=64, ignore_eos=True))
    engine.step()
    engine.step()
    fault()
    start = time.monotonic()
    with pytest.raises(WorkerFailedError) as failure:
        for _ in range(10_000):
            engine.step()
    return failure.value, time.monotonic() - start


def _assert_no_workers_left(engine):
    for process in engine.executor.processes:
        assert not process.is_alive()
        with pytest.raises(ProcessLookupError):  # reaped, not a zombie
            os.kill(process.pid, 0)


def test_worker_fault_fails_fast_naming_the_rank(tp_case):
    """Runs last for each engine: rank 1 is killed (SIGKILL: it exits) or frozen (SIGSTOP: it
    hangs, found by its missing heartbeat) mid-generation."""
    _, engine, _, prompts, _, fault_signal = tp_case
    victim = engine.executor.processes[1].pid
    error, elapsed = _step_until_failure(engine, prompts, lambda: os.kill(victim, fault_signal))
    assert error.rank == 1 and "rank 1" in str(error)
    assert elapsed < 30
    _assert_no_workers_left(engine)
    # The engine stays failed with the same error; no call hangs.
    with pytest.raises(WorkerFailedError, match="rank 1"):
        engine.step()
