"""Bad input gets a ValueError naming the problem; the engine keeps serving afterwards."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
import torch

from mmcore import Engine, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
VALID = "USER: <image>\nWhat is this?\nASSISTANT:"


def _png_bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (with a valid CRC)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    idat = zlib.compress(b"\x00" * 16)
    idat_chunk = (
        struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk + idat_chunk


def _jpeg_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, limit_mm_per_prompt={"image": 2}, max_model_len=512)


def _cases(photos, engine):
    a = photos["astronaut"]
    hidden = engine.processor.embeds_hidden_size
    return [
        (
            {"prompt": VALID, "multi_modal_data": {"image": [a, a]}},
            GREEDY,
            r"1 <image> placeholders? but 2 images",
        ),
        (
            {"prompt": "USER: <image> <image>\nASSISTANT:", "multi_modal_data": {"image": a}},
            GREEDY,
            r"2 <image> placeholders but 1 image",
        ),
        (
            {"prompt": "<image>" * 3, "multi_modal_data": {"image": [a, a, a]}},
            GREEDY,
            "limit_mm_per_prompt",
        ),
        (
            {"prompt": VALID, "multi_modal_data": {"audio": [0.0] * 100}},
            GREEDY,
            "does not accept audio",
        ),
        (
            {"prompt": VALID, "multi_modal_data": {"image": b"\x89PNG\r\n\x1a\nnot really"}},
            GREEDY,
            "image",
        ),
        ({"prompt": VALID, "multi_modal_data": {"image": _jpeg_bytes(a)[:200]}}, GREEDY, "image"),
        ({"prompt": VALID, "multi_modal_data": {"image": _png_bomb()}}, GREEDY, "pixels"),
        (
            {"prompt": "word " * 600 + VALID, "multi_modal_data": {"image": a}},
            GREEDY,
            "longer than the maximum|max_model_len",
        ),
        (
            {
                "prompt": VALID,
                "multi_modal_data": {"image": {"image_embeds": torch.zeros(4, hidden + 1)}},
            },
            GREEDY,
            f"image_embeds must have shape \\[num_embeds, {hidden}\\]",
        ),
    ]


def test_each_bad_input_is_a_clear_error_and_the_engine_carries_on(engine, photos):
    reference = engine.generate(
        {"prompt": VALID, "multi_modal_data": {"image": photos["chelsea"]}}, GREEDY, use_tqdm=False
    )
    for prompt, params, message in _cases(photos, engine):
        with pytest.raises(ValueError, match=message):
            engine.generate(prompt, params, use_tqdm=False)
        assert engine.stats()["kv_blocks_used"] == 0
        again = engine.generate(
            {"prompt": VALID, "multi_modal_data": {"image": photos["chelsea"]}},
            GREEDY,
            use_tqdm=False,
        )
        assert again[0].outputs[0].token_ids == reference[0].outputs[0].token_ids


def test_a_bad_prompt_in_a_batch_runs_nothing(engine, photos):
    good = {"prompt": VALID, "multi_modal_data": {"image": photos["coffee"]}}
    bad = {"prompt": VALID, "multi_modal_data": {"image": b"garbage"}}
    with pytest.raises(ValueError):
        engine.generate([good, bad], GREEDY, use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0


def test_a_large_batch_keeps_input_order_and_a_bad_prompt_runs_nothing(engine, photos):
    names = ["astronaut", "chelsea", "coffee"]
    prompts = [
        {"prompt": VALID, "multi_modal_data": {"image": photos[names[i % 3]]}} for i in range(20)
    ]
    singles = {n: engine.generate(prompts[i], GREEDY, use_tqdm=False) for i, n in enumerate(names)}
    batch = engine.generate(prompts, GREEDY, use_tqdm=False)
    for i, out in enumerate(batch):
        assert out.outputs[0].token_ids == singles[names[i % 3]][0].outputs[0].token_ids, i

    bad = list(prompts)
    bad[13] = {"prompt": VALID, "multi_modal_data": {"image": b"garbage"}}
    with pytest.raises(ValueError, match="image"):
        engine.generate(bad, GREEDY, use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0


def test_sampling_values_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine, photos):
    prompt = {"prompt": VALID, "multi_modal_data": {"image": photos["astronaut"]}}

    def run(seed):
        params = SamplingParams(
            temperature=1.5, top_k=50, max_tokens=16, seed=seed, ignore_eos=True
        )
        return engine.generate([prompt, prompt], params, use_tqdm=False)

    first, second, other = run(1), run(1), run(2)
    texts = [o.outputs[0].token_ids for o in first]
    assert texts == [o.outputs[0].token_ids for o in second]
    assert texts[0] == texts[1]  # the same seed gives the same tokens within a batch too
    assert texts != [o.outputs[0].token_ids for o in other]


def test_n_completions_and_stop_strings(engine, photos):
    prompt = {"prompt": VALID, "multi_modal_data": {"image": photos["astronaut"]}}
    outs = engine.generate(
        prompt, SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=8), use_tqdm=False
    )
    assert [c.index for c in outs[0].outputs] == [0, 1, 2]
    assert all(len(c.token_ids) >= 1 for c in outs[0].outputs)
    full = engine.generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True), use_tqdm=False
    )
    text = full[0].outputs[0].text
    if len(text) > 4:
        stop = text[2:4]
        cut = engine.generate(
            prompt,
            SamplingParams(temperature=0.0, max_tokens=12, stop=[stop], ignore_eos=True),
            use_tqdm=False,
        )
        completion = cut[0].outputs[0]
        assert completion.finish_reason == "stop" and completion.stop_reason == stop
        assert completion.text == text[: text.index(stop)]
