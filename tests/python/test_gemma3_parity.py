"""Gemma 3: token-for-token parity with HF transformers' greedy generate().

The tiny checkpoint's LM mixes sliding-window (window 8) and global layers, so every prompt
runs past the window; image tokens attend to each other both ways (HF's ``token_type_ids``
mask, mmcore's ``attend_until``). Chunked prefill must never cut an image: checked on the
scheduler's own output.
"""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.gemma3_oracle import hf_greedy, hf_inputs, load_hf_gemma3

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
IMG = "<start_of_image>"
PAN_AND_SCAN = {"do_pan_and_scan": True}
LONG = "A photo of an astronaut standing next to a flag on the moon. " * 3
SMALL_KV = 64 << 20  # bytes: a small cache starts fast


def _user(body: str) -> str:
    return f"<bos><start_of_turn>user\n{body}<end_of_turn>\n<start_of_turn>model\n"


def _prompts(photos) -> list[tuple[str, list, dict | None]]:
    """12 prompts: text only, 1 and 2 images of different sizes and aspects, long prompts past
    the sliding window (one with an image in the middle), a pan-and-scan image."""
    a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
    tall, wide, cam = photos["rocket_tall"], photos["coffee_wide"], photos["camera"]
    return [
        (_user("hello there, how are you?"), [], None),
        (_user(f"{IMG}What is this?"), [a], None),
        (_user(f"{IMG} and {IMG} compare them"), [c, wide], None),
        (_user(f"Describe {IMG}"), [tall], None),
        (_user("The cat sleeps on a warm blanket"), [], None),
        (_user(f"{IMG}{IMG} both"), [a, c], None),
        (_user(LONG + "What now?"), [], None),
        (_user(f"{IMG}Again?"), [a], None),
        (_user(f"{LONG}{IMG} and the rest of the long question"), [k], None),
        (_user(f"{IMG}crops"), [wide], PAN_AND_SCAN),
        (_user("Numbers 0 1 2 3 4 5 6 7 8 9"), [], None),
        (_user(f"{IMG}"), [cam], None),
    ]


def _engine_prompt(text, images, kwargs):
    if not images:
        return text
    prompt = {"prompt": text, "multi_modal_data": {"image": images}}
    if kwargs:
        prompt["mm_processor_kwargs"] = kwargs
    return prompt


def _ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def _run(engine, prompts, params=GREEDY):
    return _ids(engine.generate([_engine_prompt(*p) for p in prompts], params, use_tqdm=False))


@pytest.fixture(scope="module")
def case(tiny_gemma3_dir, photos):
    model_dir = tiny_gemma3_dir
    engine = Engine(model_dir, seed=0, kv_cache_memory_bytes=SMALL_KV)
    prompts = _prompts(photos)
    hf = [hf_inputs(model_dir, t, imgs, pan_and_scan=bool(kw)) for t, imgs, kw in prompts]
    expected = [hf_greedy(model_dir, inputs, MAX_TOKENS) for inputs in hf]
    return model_dir, engine, prompts, hf, expected


class ChunkRecorder:
    """Stands in for the engine's scheduler: records each request's items and each step's
    chunk ends (``seq_lens``), delegating everything to the real scheduler."""

    def __init__(self, scheduler):
        self._scheduler = scheduler
        self.items: dict[int, list[tuple[int, int]]] = {}
        self.ends: list[tuple[int, int]] = []

    def add_request(self, request_id, token_ids, features, **kwargs):
        self.items[request_id] = [(f.offset, f.offset + f.length) for f in features]
        return self._scheduler.add_request(request_id, token_ids, features, **kwargs)

    def schedule(self):
        out = self._scheduler.schedule()
        self.ends += list(zip(out.req_ids.tolist(), out.seq_lens.tolist()))
        return out

    def __getattr__(self, name):
        return getattr(self._scheduler, name)

    def cuts_inside_items(self) -> list[tuple[int, int]]:
        return [
            (rid, end)
            for rid, end in self.ends
            if any(start < end < stop for start, stop in self.items[rid])
        ]


def test_prompt_tokens_equal_hf_processor(case):
    _, engine, prompts, hf, _ = case
    for prompt, inputs in zip(prompts, hf):
        processed = engine.inputs.process(_engine_prompt(*prompt))
        assert processed.token_ids.tolist() == inputs["input_ids"][0].tolist()
    assert len(hf[6]["input_ids"][0]) > 8 * 8  # far past the sliding window of 8


def test_batched_greedy_matches_hf(case):
    _, engine, prompts, _, expected = case
    assert _run(engine, prompts) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_image_embeddings_equal_hf(case):
    model_dir, engine, prompts, hf, _ = case
    model, _ = load_hf_gemma3(model_dir)
    for index in (2, 9):  # two images of different aspects; an image with pan-and-scan crops
        processed = engine.inputs.process(_engine_prompt(*prompts[index]))
        pixels = torch.cat([it.data["pixel_values"] for it in processed.items])
        torch.testing.assert_close(pixels, hf[index]["pixel_values"], rtol=0, atol=1e-6)
        with torch.no_grad():
            ref = model.model.get_image_features(pixel_values=pixels).pooler_output
            got = engine.model.encode("image", [it.data for it in processed.items])
        torch.testing.assert_close(torch.cat(got), ref.reshape(-1, ref.shape[-1]))


def test_chunks_never_split_an_image_and_keep_parity(case):
    model_dir, _, prompts, _, expected = case
    # 24 tokens per step: an image's 22-token layout fits, the long prompts take many chunks.
    engine = Engine(
        model_dir,
        max_num_batched_tokens=24,
        enable_prefix_caching=False,
        kv_cache_memory_bytes=SMALL_KV,
    )
    assert engine.config.scheduler_config.chunk_inside_mm_items is False
    recorder = ChunkRecorder(engine.scheduler)
    engine.scheduler = recorder
    chosen = [2, 3, 5, 6, 8]  # 1 and 2 images, long prompts (pan-and-scan needs > 24 tokens)
    assert _run(engine, [prompts[i] for i in chosen]) == [expected[i] for i in chosen]
    assert len(recorder.ends) > len(chosen) * MAX_TOKENS  # prompts were chunked
    assert recorder.cuts_inside_items() == []


def test_item_longer_than_the_step_budget_is_refused(case):
    model_dir, _, prompts, _, _ = case
    engine = Engine(model_dir, max_num_batched_tokens=24, kv_cache_memory_bytes=SMALL_KV)
    # 4 views = 64 embeddings over ~90 tokens: past the encoder budget and the step budget
    with pytest.raises(ValueError, match="max_num_batched_tokens|encoder budget"):
        engine.generate([_engine_prompt(*prompts[9])], GREEDY, use_tqdm=False)
    assert engine.stats()["kv_blocks_used"] == 0
    assert _run(engine, [prompts[1]]) == [case[4][1]]


def test_prefix_cache_hits_keep_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(
        model_dir, enable_prefix_caching=True, block_size=8, kv_cache_memory_bytes=SMALL_KV
    )
    chosen = [1, 2, 5, 7, 8, 9]  # images shared between prompts, a long prompt, crops
    first = _run(engine, [prompts[i] for i in chosen])
    hits_before = engine.stats()["prefix_hits"]
    second = _run(engine, [prompts[i] for i in chosen])
    assert engine.stats()["prefix_hits"] > hits_before
    assert first == second == [expected[i] for i in chosen]


def test_preemption_keeps_parity(case):
    model_dir, engine, prompts, _, expected = case
    block_bytes = kv_bytes_per_block(engine.model, 16, torch.float32)
    small = Engine(
        model_dir, kv_cache_memory_bytes=24 * block_bytes, block_size=16, max_num_batched_tokens=160
    )
    recorder = ChunkRecorder(small.scheduler)
    small.scheduler = recorder
    assert _run(small, prompts) == expected
    assert small.stats()["num_preemptions"] > 0
    assert recorder.cuts_inside_items() == []


def test_async_scheduling_keeps_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(model_dir, async_scheduling=True, kv_cache_memory_bytes=SMALL_KV)
    assert _run(engine, prompts) == expected
    assert engine.stats()["overlapped_steps"] > 0


def test_chat_with_image_parts_matches_hf(case, photos):
    model_dir, engine, _, _, _ = case
    _, processor = load_hf_gemma3(model_dir)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": photos["chelsea"]},
                {"type": "text", "text": "and"},
                {"type": "image", "image": photos["rocket_tall"]},
                {"type": "text", "text": "what are these?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = hf_inputs(model_dir, text, [photos["chelsea"], photos["rocket_tall"]])
    out = engine.chat(messages, GREEDY, use_tqdm=False)
    assert out[0].prompt_token_ids == inputs["input_ids"][0].tolist()
    assert out[0].outputs[0].token_ids == hf_greedy(model_dir, inputs, MAX_TOKENS)
