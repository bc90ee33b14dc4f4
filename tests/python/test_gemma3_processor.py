"""Gemma 3 prompt expansion against HF's ``Gemma3Processor`` with a tokenizer that has
single-token newline runs (as Gemma's own has): HF expands ``<start_of_image>`` in text and
tokenizes once, so ``user\\n`` + ``\\n\\n<start_of_image>`` becomes one ``\\n\\n\\n`` token;
mmcore's expanded prompt must be the same ids. Also the processor's refusals."""

from __future__ import annotations

import pytest

IMG = "<start_of_image>"


@pytest.fixture(scope="module")
def processors(tiny_gemma3_dir):
    from transformers import AutoConfig, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from mmcore.engine.inputs import InputProcessor
    from mmcore.models.gemma3.processor import Gemma3MultiModalProcessor
    from mmcore.multimodal.processor_cache import ProcessorCache
    from mmcore.testing.tiny_gemma3 import TOKENS_PER_IMAGE, build_gemma3_tokenizer

    tok = build_gemma3_tokenizer(newline_runs=True)
    assert len(tok("\n\n\n", add_special_tokens=False)["input_ids"]) == 1
    config = AutoConfig.from_pretrained(tiny_gemma3_dir)
    ours = Gemma3MultiModalProcessor(tiny_gemma3_dir, config, tok)
    inputs = InputProcessor(
        ours,
        tok,
        model_id="tiny",
        max_model_len=1024,
        limit_mm_per_prompt=None,
        mm_processor_kwargs=None,
        cache=ProcessorCache(1 << 20),
    )
    hf = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil.from_pretrained(tiny_gemma3_dir),
        tokenizer=tok,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    return inputs, hf


@pytest.mark.parametrize(
    "text,count",
    [
        (f"<start_of_turn>user\n{IMG}What is it?", 1),
        (f"<start_of_turn>user\n\n{IMG}\nDescribe\n\n{IMG}\n\nnow", 2),
        (f"{IMG}{IMG} both", 2),
        (f"A photo\n{IMG}", 1),
        (f"two:\n{IMG}\n{IMG}\n\n", 2),
    ],
)
def test_expanded_ids_equal_hf_with_newline_tokens(processors, photos, text, count):
    inputs, hf = processors
    images = [photos["chelsea"], photos["coffee_wide"]][:count]
    want = hf(text=[text], images=[images], add_special_tokens=False)["input_ids"][0]
    got = inputs.process({"prompt": text, "multi_modal_data": {"image": images}})
    assert got.token_ids.tolist() == list(want)
    soft = hf.tokenizer.image_token_id
    for feature in got.features:  # each item still covers its image tokens
        span = got.token_ids[feature.offset : feature.offset + feature.length]
        assert (span == soft).sum() == feature.num_embeds


def test_refusals(processors, photos):
    inputs, _ = processors
    processor = inputs.processor
    with pytest.raises(ValueError, match="pan_and_scan_max_num_crops"):
        processor.settings({"pan_and_scan_max_num_crops": 2})  # engine-wide only
    with pytest.raises(ValueError, match="not known"):
        processor.settings({"min_pixels": 2})
    with pytest.raises(ValueError, match="positive"):
        processor.num_crops(0, 5)
    with pytest.raises(ValueError, match="pixel_values"):
        processor.num_embeds_processed(
            "image", {"pixel_values": __import__("torch").zeros(3, 8, 8)}
        )
    with pytest.raises(ValueError):
        inputs.process(
            {"prompt": f"{IMG}{IMG}", "multi_modal_data": {"image": [photos["chelsea"]]}}
        )
