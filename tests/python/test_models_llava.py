"""LLaVA / LLaVA-NeXT parity with HF transformers: image embeddings and full-prompt logits."""

import pytest
import torch
from PIL import Image

from mmcore.testing.oracle import hf_image_features, load_hf_and_mmcore, scatter_embeds
from mmcore.testing.paged import PagedKVCache

PROMPTS = {
    "two_images": (
        "USER: <image>\nWhat is in this image? And here: <image> ASSISTANT:",
        ["astronaut", "coffee_wide"],
    ),
    "one_image": ("USER: Describe the picture <image> in detail. ASSISTANT:", ["rocket_tall"]),
    "three_images": (
        "USER: <image><image> the cat <image>? ASSISTANT:",
        ["chelsea", "camera", "rocket"],
    ),
}


@pytest.fixture(scope="module", params=["llava", "llava_next", "llava_next_mistral"])
def setup(request, tiny_model_dirs):
    return load_hf_and_mmcore(tiny_model_dirs[request.param])


def _hf_inputs(hf_processor, prompt, images):
    return hf_processor(text=prompt, images=images, return_tensors="pt")


def test_image_embeddings_match_hf(setup, photos):
    hf, hf_processor, model, _, _ = setup
    images = [
        photos[n]
        for n in ("astronaut", "chelsea", "coffee", "camera", "rocket_tall", "coffee_wide")
    ]
    inputs = _hf_inputs(hf_processor, "<image>" * len(images), images)
    expected = hf_image_features(hf, inputs)
    if "image_sizes" in inputs:
        items = [
            {"pixel_values": p, "image_sizes": s}
            for p, s in zip(inputs["pixel_values"], inputs["image_sizes"])
        ]
    else:
        items = [{"pixel_values": p} for p in inputs["pixel_values"]]
    with torch.no_grad():
        got = model.encode("image", items)  # all images in one batched call
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_encode_is_independent_of_batching(setup, photos):
    _, _, model, processor, _ = setup
    images = [photos["chelsea"], photos["coffee_wide"]]
    items = processor.process("image", images)
    with torch.no_grad():
        together = model.encode("image", items)
        alone = [model.encode("image", [item])[0] for item in items]
    for t, a in zip(together, alone):
        torch.testing.assert_close(t, a, atol=1e-6, rtol=0)


def test_packed_prompts_match_hf_last_token_logits(setup, photos):
    hf, hf_processor, model, processor, config = setup
    image_token_id = processor.placeholder_token_id("image")
    cache = PagedKVCache(model, num_blocks=256, block_size=8, dtype=torch.float32, device="cpu")
    embeds, expected, requests = [], [], []
    for rid, (prompt, names) in enumerate(PROMPTS.values()):
        images = [photos[n] for n in names]
        inputs = _hf_inputs(hf_processor, prompt, images)
        ids = inputs["input_ids"][0]
        with torch.no_grad():
            expected.append(hf(**inputs).logits[0, -1])
            # mmcore's own processor + encoder feed the LM, as the runner does
            image_embeds = model.encode("image", processor.process("image", images))
        assert [e.shape[0] for e in image_embeds] == [
            processor.num_embeds("image", im) for im in images
        ]
        embeds.append(scatter_embeds(model, ids, image_token_id, image_embeds))
        requests.append((rid, 0, ids.shape[0]))
    attn, positions = cache.step(requests)
    with torch.no_grad():
        hidden = model(torch.cat(embeds), positions, cache.kv_caches, attn)
    last_rows = attn.query_start_loc[1:].long() - 1
    logits = model.compute_logits(hidden[last_rows])
    assert logits.dtype == torch.float32 and logits.shape == (
        len(PROMPTS),
        config.text_config.vocab_size,
    )
    for got, want in zip(logits, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert got.argmax() == want.argmax()


def test_unsupported_modality_is_rejected(setup):
    _, _, model, processor, _ = setup
    with pytest.raises(ValueError, match="audio"):
        model.encode("audio", [{}])
    with pytest.raises(ValueError, match="audio"):
        processor.num_embeds("audio", None)


def test_num_embeds_equals_encoder_output_for_many_sizes(setup):
    """The count the core schedules with is exactly what encode() returns (and HF produces)."""
    hf, hf_processor, model, processor, _ = setup
    g = torch.Generator().manual_seed(0)
    sizes = [(32, 32), (10, 300), (300, 10), (33, 65), (100, 37), (64, 64), (17, 23), (90, 20)]
    images = []
    for h, w in sizes:
        array = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        images.append(Image.fromarray(array))
    with torch.no_grad():
        got = model.encode("image", processor.process("image", images))
    inputs = _hf_inputs(hf_processor, "<image>" * len(images), images)
    expected = hf_image_features(hf, inputs)
    for image, (h, w), g_emb, e_emb in zip(images, sizes, got, expected):
        assert g_emb.shape[0] == processor.num_embeds("image", image) == e_emb.shape[0], (h, w)
        torch.testing.assert_close(g_emb, e_emb, atol=1e-5, rtol=0)
