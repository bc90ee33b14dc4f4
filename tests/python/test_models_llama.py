"""A text-only Llama checkpoint served through the same loader/registry, against HF."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmcore.model_loader import load_model
from mmcore.multimodal import get_processor_class
from mmcore.testing.paged import PagedKVCache
from mmcore.testing.tiny_checkpoints import build_tokenizer


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        rope_parameters={"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0},
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(5)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_text_only_llama_matches_hf(llama_dir):
    hf = LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    model, config = load_model(llama_dir, dtype=torch.float32, device="cpu")
    assert model.tie_word_embeddings and model.num_kv_heads == 1 and model.head_dim == 16
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, config.vocab_size, (n,), generator=g) for n in (19, 1, 7)]
    cache = PagedKVCache(model, num_blocks=32, block_size=4, dtype=torch.float32, device="cpu")
    attn, pos = cache.step([(i, 0, p.shape[0]) for i, p in enumerate(prompts)])
    with torch.no_grad():
        hidden = model(model.embed_tokens(torch.cat(prompts)), pos, cache.kv_caches, attn)
        logits = model.compute_logits(hidden)
        start = 0
        for p in prompts:
            want = hf(input_ids=p[None]).logits[0]
            torch.testing.assert_close(logits[start : start + p.shape[0]], want, atol=1e-4, rtol=0)
            start += p.shape[0]


def test_text_only_model_rejects_media(llama_dir):
    model, config = load_model(llama_dir, dtype=torch.float32, device="cpu", load_format="dummy")
    processor = get_processor_class(config.model_type)(llama_dir, config, None, None)
    with pytest.raises(ValueError, match="does not accept image"):
        model.encode("image", [])
    for call in (
        lambda: processor.num_embeds("image", None),
        lambda: processor.placeholder_token_id("image"),
        lambda: processor.process("image", []),
        lambda: processor.dummy_items("image", 1),
    ):
        with pytest.raises(ValueError, match="does not accept image"):
            call()
