"""The paged-cache path: chunked prefill (split inside an image) + decodes == one full pass."""

import pytest
import torch

from mmcore.model_loader import load_model
from mmcore.testing.oracle import load_hf_and_mmcore, scatter_embeds
from mmcore.testing.paged import PagedKVCache

NUM_DECODES = 3


@pytest.fixture(scope="module", params=["llava", "llava_next", "llava_next_mistral"])
def setup(request, tiny_model_dirs):
    model_dir = tiny_model_dirs[request.param]
    return (*load_hf_and_mmcore(model_dir)[:4], model_dir)


def _prompt(hf_processor, processor, model, prompt, images):
    """(expanded ids, mmcore input embeddings) of a prompt with images."""
    ids = hf_processor(text=prompt, images=images, return_tensors="pt")["input_ids"][0]
    with torch.no_grad():
        image_embeds = model.encode("image", processor.process("image", images))
    return ids, scatter_embeds(model, ids, processor.placeholder_token_id("image"), image_embeds)


def test_chunked_prefill_and_decode_match_hf(setup, photos):
    hf, hf_processor, model, processor, _ = setup
    image_token_id = processor.placeholder_token_id("image")
    images_a = [photos["chelsea"], photos["coffee_wide"]]
    ids_a, embeds_a = _prompt(
        hf_processor, processor, model, "USER: <image> and <image> ASSISTANT:", images_a
    )
    ids_b, embeds_b = _prompt(
        hf_processor, processor, model, "USER: <image>\nWhat? ASSISTANT:", [photos["rocket_tall"]]
    )

    # Oracle: HF greedy tokens, then one HF pass over prompt + generated tokens.
    inputs_a = hf_processor(
        text="USER: <image> and <image> ASSISTANT:", images=images_a, return_tensors="pt"
    )
    with torch.no_grad():
        generated = hf.generate(**inputs_a, max_new_tokens=NUM_DECODES, do_sample=False)
        full = dict(inputs_a, input_ids=generated, attention_mask=torch.ones_like(generated))
        hf_logits = hf(**full).logits[0]
    new_tokens = generated[0, ids_a.shape[0] :]
    assert new_tokens.shape[0] == NUM_DECODES  # no early EOS: every decode step is checked
    prompt_len = ids_a.shape[0]

    # Split A's prompt in the middle of its first image's placeholder range.
    image_positions = (ids_a == image_token_id).nonzero().flatten()
    split = int(image_positions[image_positions.shape[0] // 4])
    cache = PagedKVCache(model, num_blocks=128, block_size=4, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        # step 1: A's first chunk alone
        attn, pos = cache.step([("a", 0, split)])
        model(embeds_a[:split], pos, cache.kv_caches, attn)
        # step 2: A's second chunk packed with B's whole prompt
        attn, pos = cache.step([("a", split, prompt_len - split), ("b", 0, ids_b.shape[0])])
        hidden = model(torch.cat([embeds_a[split:], embeds_b]), pos, cache.kv_caches, attn)
        step_logits = [model.compute_logits(hidden[prompt_len - split - 1 : prompt_len - split])[0]]
        # decode steps: A and B decode together, A takes HF's tokens
        token_b = model.compute_logits(hidden[-1:]).argmax(-1)
        seq_a, seq_b = prompt_len, ids_b.shape[0]
        for token_a in new_tokens:
            attn, pos = cache.step([("a", seq_a, 1), ("b", seq_b, 1)])
            embeds = model.embed_tokens(torch.stack([token_a, token_b[0]]))
            hidden = model(embeds, pos, cache.kv_caches, attn)
            logits = model.compute_logits(hidden)
            step_logits.append(logits[0])
            token_b = logits[1:].argmax(-1)
            seq_a, seq_b = seq_a + 1, seq_b + 1

    for step, got in enumerate(step_logits):
        want = hf_logits[prompt_len - 1 + step]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    greedy = torch.stack([lg.argmax() for lg in step_logits[:NUM_DECODES]])
    assert torch.equal(greedy, new_tokens)


def test_bfloat16_model_and_cache_track_float32(setup, photos):
    """dtype plumbing: bf16 weights, bf16 KV cache, fp32 pixels in -> logits close to fp32."""
    _, hf_processor, model32, processor, model_dir = setup
    model16, _ = load_model(model_dir, dtype=torch.bfloat16, device="cpu")
    results = []
    for model in (model32, model16):
        ids, embeds = _prompt(
            hf_processor, processor, model, "USER: <image> hi ASSISTANT:", [photos["coffee"]]
        )
        assert embeds.dtype == model.language_model.model.embed_tokens.weight.dtype
        cache = PagedKVCache(model, num_blocks=64, block_size=4, dtype=embeds.dtype, device="cpu")
        attn, pos = cache.step([(0, 0, ids.shape[0])])
        with torch.no_grad():
            results.append(model.compute_logits(model(embeds, pos, cache.kv_caches, attn)[-1:])[0])
    fp32, bf16 = results
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
