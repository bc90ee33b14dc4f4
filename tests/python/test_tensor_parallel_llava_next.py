"""Tensor parallelism for LLaVA-NeXT on CPU (2 gloo workers, executor "mp").

- 2 KV heads (split 1 + 1 over the ranks), CLIP tower and projector sharded by heads / rows;
- 1 KV head (replicated on both ranks), tower and projector data-parallel (each rank encodes a
  share of the step's images, whatever their tile counts, then one all-gather).
Eight prompts with images whose anyres grids differ (1x1, 1x2, 2x1, 2x2 tiles + base tile, so
different unpadded maps and newline counts), chunks cutting through them, prefix caching,
preemption and async scheduling: greedy tokens equal HF's and the single-process engine's.
"""

from __future__ import annotations

import pytest
import torch
from test_engine_parity import _engine_prompts, _token_ids

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.multimodal import anyres
from mmcore.testing.oracle import hf_greedy
from mmcore.testing.tiny_checkpoints import build_tiny_llava_next

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
BLOCK_SIZE = 16
CACHE_BLOCKS = 12  # holds the longest request (two 2x2 images) and a little more

CASES = {
    # name: (KV heads, mm_encoder_tp_mode)
    "kv2_encoder_sharded": (2, "weights"),
    "kv1_replicated_encoder_data": (1, "data"),
}


def _prompts(photos):
    a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
    tall, wide = photos["rocket_tall"], photos["coffee_wide"]
    small = a.resize((28, 24))  # fits one tile: a 1x1 grid
    return [
        ("USER: hello there, how are you?\nASSISTANT:", []),
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: <image>\nA tall one.\nASSISTANT:", [tall]),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [wide, c]),
        ("USER: tell me a story about a dog\nASSISTANT:", []),
        ("USER: <image> <image>\nWhat colour?\nASSISTANT:", [k, small]),
        ("USER: <image><image><image>\nThree.\nASSISTANT:", [tall, a, wide]),
        ("USER: <image>\nAgain?\nASSISTANT:", [a]),
    ]


@pytest.fixture(scope="module", params=list(CASES))
def tp_case(request, tmp_path_factory, photos):
    num_kv_heads, encoder_mode = CASES[request.param]
    model_dir = build_tiny_llava_next(
        tmp_path_factory.mktemp(request.param),
        seed=0,
        text_overrides={"num_key_value_heads": num_kv_heads},
    )
    prompts = _prompts(photos)
    expected = [hf_greedy(model_dir, p, imgs, MAX_TOKENS) for p, imgs in prompts]
    options = dict(
        max_num_batched_tokens=48,  # chunks cut through the images (20-80 embeddings each)
        enable_prefix_caching=True,
        async_scheduling=True,
        block_size=BLOCK_SIZE,
    )
    single = Engine(model_dir, **options, kv_cache_memory_bytes=1 << 20)
    full_block = kv_bytes_per_block(single.model, BLOCK_SIZE, torch.float32)
    per_rank_block = full_block // num_kv_heads * max(1, num_kv_heads // 2)
    engine = Engine(
        model_dir,
        tensor_parallel_size=2,
        mm_encoder_tp_mode=encoder_mode,
        kv_cache_memory_bytes=CACHE_BLOCKS * per_rank_block,
        **options,
    )
    yield engine, single, _engine_prompts(prompts), expected
    engine.shutdown()


def test_tp2_llava_next_greedy_matches_hf_and_tp1(tp_case):
    engine, single, prompts, expected = tp_case
    assert engine.config.num_blocks == CACHE_BLOCKS
    # The images' anyres grids differ, so do their tile counts (1x1 to 2x2 grids + base).
    model = single.model
    tiles = {
        anyres.num_tiles(image.height, image.width, model.pinpoints, model.tile_size)
        for p in prompts
        if isinstance(p, dict)
        for image in p["multi_modal_data"]["image"]
    }
    assert len(tiles) >= 3, tiles
    assert _token_ids(engine.generate(prompts, GREEDY, use_tqdm=False)) == expected
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_used"] == 0
    hits = stats["prefix_hits"]
    again = engine.generate([prompts[1], prompts[7]], GREEDY, use_tqdm=False)
    assert _token_ids(again) == [expected[1], expected[7]]
    assert engine.stats()["prefix_hits"] > hits
    assert _token_ids(single.generate(prompts, GREEDY, use_tqdm=False)) == expected
