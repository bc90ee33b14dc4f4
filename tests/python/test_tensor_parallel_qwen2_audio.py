"""Tensor parallelism for Qwen2-Audio on CPU (2 gloo workers, executor "mp").

- Qwen2 LM with 2 KV heads (split 1 + 1 over the ranks), Whisper-style audio tower sharded by
  heads (q/k/v and fc1 column-, out_proj and fc2 row-parallel);
- 1 KV head (replicated on both ranks), audio tower data-parallel (each rank encodes a share of
  the step's clips, then one all-gather).
Nine prompts with 0, 1 and 2 clips of speech, noise and a tone at several sampling rates, chunks
cutting through the clips, prefix caching, preemption and async scheduling: greedy tokens equal
HF's and the single-process engine's.
"""

from __future__ import annotations

import pytest
from test_qwen2_audio_parity import _engine_prompts, _hf_greedy, _prompts, _tokens, speech_clips

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.tiny_audio_checkpoints import build_tiny_qwen2_audio

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
BLOCK_SIZE = 16

CASES = {
    # name: (KV heads, mm_encoder_tp_mode)
    "kv2_encoder_sharded": (2, "weights"),
    "kv1_replicated_encoder_data": (1, "data"),
}


@pytest.fixture(scope="module", params=list(CASES))
def tp_case(request, tmp_path_factory):
    num_kv_heads, encoder_mode = CASES[request.param]
    model_dir = build_tiny_qwen2_audio(
        tmp_path_factory.mktemp(request.param),
        seed=0,
        text_overrides={"num_key_value_heads": num_kv_heads},
    )
    prompts = _prompts(speech_clips())
    assert len(prompts) >= 8 and {len(c) for _, c in prompts} == {0, 1, 2}
    expected = [_hf_greedy(model_dir, p, c) for p, c in prompts]
    prompts = _engine_prompts(prompts)
    options = dict(
        max_num_batched_tokens=48,  # chunks cut through the clips (25 embeddings a second)
        enable_prefix_caching=True,
        async_scheduling=True,
        block_size=BLOCK_SIZE,
    )
    single = Engine(model_dir, **options)
    longest = max(len(o.prompt_token_ids) for o in single.generate(prompts, GREEDY, use_tqdm=False))
    # The longest request and two blocks more: the newest requests wait or are preempted.
    blocks = -(-(longest + MAX_TOKENS) // BLOCK_SIZE) + 2
    per_rank_block = (
        kv_bytes_per_block(single.model, BLOCK_SIZE, single.config.dtype)
        // num_kv_heads
        * max(1, num_kv_heads // 2)
    )
    engine = Engine(
        model_dir,
        tensor_parallel_size=2,
        mm_encoder_tp_mode=encoder_mode,
        kv_cache_memory_bytes=blocks * per_rank_block,
        **options,
    )
    assert engine.config.num_blocks == blocks
    yield engine, single, prompts, expected
    engine.shutdown()


def test_tp2_qwen2_audio_greedy_matches_hf_and_tp1(tp_case):
    engine, single, prompts, expected = tp_case
    assert _tokens(engine.generate(prompts, GREEDY, use_tqdm=False)) == expected
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_used"] == 0
    hits = stats["prefix_hits"]
    again = engine.generate(prompts[1:4], GREEDY, use_tqdm=False)
    assert _tokens(again) == expected[1:4]
    assert engine.stats()["prefix_hits"] > hits
    assert _tokens(single.generate(prompts, GREEDY, use_tqdm=False)) == expected
