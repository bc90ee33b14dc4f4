"""Prefix caching with M-RoPE: KV blocks are shared only where tokens, items AND positions agree.

The same image at the same place shares its blocks. The same video item (same identifier, same
tokens) at other M-RoPE positions must not: block hashes carry the positions. Through the public
API another frame rate also makes another item (the settings are part of its identity).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mmcore import Engine, SamplingParams
from mmcore.testing.qwen2_vl_oracle import hf_greedy, hf_inputs

BLOCK = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def _user(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def _clip() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def _video_prompt(tail: str, fps: float) -> dict:
    return {
        "prompt": _user(f"{VID}{tail}"),
        "multi_modal_data": {"video": _clip()},
        "multi_modal_uuids": {"video": "clip-1"},
        "mm_processor_kwargs": {"fps": fps},
    }


@pytest.fixture()
def engine(tiny_qwen2_5_vl_dir):
    return Engine(tiny_qwen2_5_vl_dir, enable_prefix_caching=True, block_size=BLOCK, seed=0)


def _hits(engine, prompt) -> int:
    before = engine.stats()["prefix_hits"]
    engine.generate(prompt, GREEDY, use_tqdm=False)
    return engine.stats()["prefix_hits"] - before


def test_same_image_same_position_shares_blocks(engine, photos):
    image = photos["chelsea"]
    first = {"prompt": _user(f"{IMG}What is this?"), "multi_modal_data": {"image": image}}
    second = {"prompt": _user(f"{IMG}Describe the colours."), "multi_modal_data": {"image": image}}
    processed = engine.inputs.process(first)
    image_end = processed.items[0].offset + processed.items[0].num_embeds
    assert _hits(engine, first) == 0
    assert _hits(engine, second) >= image_end // BLOCK * BLOCK  # every block through the image


def _run_processed(engine, processed) -> tuple[int, list[int]]:
    """Run one already processed prompt; (prefix hits it got, its tokens)."""
    before = engine.stats()["prefix_hits"]
    engine.add_processed("forged", processed, GREEDY)
    tokens = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens = out.outputs[0].token_ids
    return engine.stats()["prefix_hits"] - before, tokens


def test_same_video_at_other_positions_does_not_share(engine, tiny_qwen2_5_vl_dir):
    at_2fps = _video_prompt("What happens?", 2.0)
    p2 = engine.inputs.process(at_2fps)
    p1 = engine.inputs.process(_video_prompt("What happens?", 1.0))
    # another frame rate is another item, even under the same uuid
    assert p2.items[0].identifier != p1.items[0].identifier
    assert np.array_equal(p2.token_ids, p1.token_ids)
    assert not np.array_equal(p2.mrope.positions, p1.mrope.positions)
    # same tokens, same item identifier, only the M-RoPE positions differ (1 fps layout)
    moved = replace(p2, mrope=p1.mrope)
    video_start = p2.items[0].offset
    assert _hits(engine, at_2fps) == 0
    first_moved = int(np.flatnonzero((p2.mrope.positions != p1.mrope.positions).any(axis=0))[0])
    assert video_start < first_moved  # the first frames keep their temporal position
    hits, tokens = _run_processed(engine, moved)
    assert hits <= first_moved // BLOCK * BLOCK  # no block holding a moved position is shared
    inputs = hf_inputs(tiny_qwen2_5_vl_dir, at_2fps["prompt"], [], [p1.items[0].data])
    assert tokens == hf_greedy(tiny_qwen2_5_vl_dir, inputs, 4)  # the 1 fps answer
    # the same positions again do share, through the video
    video_end = video_start + p2.items[0].num_embeds
    assert _hits(engine, _video_prompt("Say more.", 2.0)) >= video_end // BLOCK * BLOCK
