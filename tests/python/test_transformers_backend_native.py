"""Transformers backend on families mmcore also runs natively: Qwen2-VL (M-RoPE) equals HF
generate(), and LLaVA-1.5 and a text-only Llama equal the native path token for token."""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.qwen2_vl_oracle import hf_greedy, hf_inputs

MAX_TOKENS = 5
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
QWEN_IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _qwen_user(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def _qwen_prompts(photos) -> list[tuple[str, list]]:
    a, c, tall, wide = (photos[k] for k in ("astronaut", "chelsea", "rocket_tall", "coffee_wide"))
    return [
        (_qwen_user("hello there, how are you?"), []),
        (_qwen_user(f"{QWEN_IMG}What is this?"), [a]),
        (_qwen_user(f"{QWEN_IMG} and {QWEN_IMG} compare them"), [c, wide]),
        (_qwen_user("tell me a story about a cat on a warm blanket"), []),
        (_qwen_user(f"A question about the picture: {QWEN_IMG}"), [tall]),
        (_qwen_user(f"{QWEN_IMG}{QWEN_IMG} both"), [wide, a]),
    ]


def _engine_prompt(text: str, images: list):
    return {"prompt": text, "multi_modal_data": {"image": images}} if images else text


def _run(engine, prompts) -> list[list[int]]:
    outputs = engine.generate([_engine_prompt(*p) for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def qwen(tiny_qwen2_vl_dir, photos):
    prompts = _qwen_prompts(photos)
    expected = [
        hf_greedy(tiny_qwen2_vl_dir, hf_inputs(tiny_qwen2_vl_dir, text, images, []), MAX_TOKENS)
        for text, images in prompts
    ]
    engine = Engine(tiny_qwen2_vl_dir, model_impl="transformers")
    return tiny_qwen2_vl_dir, engine, prompts, expected


def test_qwen2_vl_through_transformers_matches_hf(qwen):
    _, engine, prompts, expected = qwen
    assert type(engine.model).__name__ == "TransformersModel"
    assert engine.model.uses_mrope  # 3-row positions reach HF's rotary embedding
    assert len({tuple(e) for e in expected}) > 1
    assert _run(engine, prompts) == expected
    hits_before = engine.stats()["prefix_hits"]
    assert _run(engine, prompts) == expected  # again, from the prefix cache
    assert engine.stats()["prefix_hits"] > hits_before


def test_qwen2_vl_through_transformers_chunked_and_preempted(qwen):
    model_dir, engine, prompts, expected = qwen
    chunked = Engine(
        model_dir, model_impl="transformers", max_num_batched_tokens=16, enable_prefix_caching=False
    )
    assert _run(chunked, prompts[1:3]) == expected[1:3]
    block_bytes = kv_bytes_per_block(engine.model, 4, torch.float32)
    longest = max(len(engine.inputs.process(_engine_prompt(*p)).token_ids) for p in prompts)
    small = Engine(
        model_dir,
        model_impl="transformers",
        kv_cache_memory_bytes=(-(-(longest + MAX_TOKENS) // 4) + 2) * block_bytes,
        block_size=4,
        max_num_batched_tokens=32,
        enable_prefix_caching=False,
    )
    assert _run(small, prompts) == expected
    assert small.stats()["num_preemptions"] > 0


def test_llava_through_transformers_equals_native(tiny_llava_dir, photos):
    a, c, wide = photos["astronaut"], photos["chelsea"], photos["coffee_wide"]
    prompts = [
        ("USER: hello there, what is on the table? ASSISTANT:", []),
        ("USER: <image>\nDescribe the picture. ASSISTANT:", [a]),
        ("USER: <image>\n and <image>\n compare them ASSISTANT:", [c, wide]),
        ("USER: tell me about the cat ASSISTANT:", []),
        ("USER: what is this? <image>\n ASSISTANT:", [wide]),
        ("USER: <image><image> both ASSISTANT:", [a, c]),
    ]
    native = Engine(tiny_llava_dir, model_impl="mmcore")
    backend = Engine(tiny_llava_dir, model_impl="transformers")
    assert type(native.model).__name__ == "LlavaModel"
    assert type(backend.processor).__name__ == "TransformersMultiModalProcessor"
    for prompt in prompts:  # HF's processor lays out the same prompt as mmcore's
        ids = [
            e.inputs.process(_engine_prompt(*prompt)).token_ids.tolist() for e in (native, backend)
        ]
        assert ids[0] == ids[1]
    expected = _run(native, prompts)
    assert len({tuple(e) for e in expected}) > 1
    assert _run(backend, prompts) == expected


def test_text_only_llama_through_transformers_equals_native(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE, build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts = ["The cat sleeps on", "A photo of an astronaut", "Numbers 0 1 2", "Describe the"]
    native = Engine(str(tmp_path), model_impl="mmcore")
    backend = Engine(str(tmp_path), model_impl="transformers")
    assert type(backend.model).__name__ == "TransformersModel"
    assert backend.processor.supported_modalities == ()
    expected = [o.outputs[0].token_ids for o in native.generate(prompts, GREEDY, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in backend.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == expected


def test_text_only_gpt2_through_auto_matches_hf(tmp_path):
    """GPT-2 has no native code: ``auto`` runs it through the backend (learned positions,
    ``h`` / ``attn`` module names) and it equals HF generate()."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE, build_tokenizer

    tok = build_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok),
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts = ["The cat sleeps on", "A photo of an astronaut", "Numbers 0 1 2"]
    engine = Engine(str(tmp_path))
    assert type(engine.model).__name__ == "TransformersModel"
    expected = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        expected.append(out[0, ids["input_ids"].shape[1] :].tolist())
    got = [o.outputs[0].token_ids for o in engine.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == expected


def test_dummy_weights_through_transformers_run(tiny_llava_dir, photos):
    """``load_format="dummy"`` (benchmarks) builds the HF model from its config alone."""
    engine = Engine(tiny_llava_dir, load_format="dummy", model_impl="transformers")
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    prompt = {
        "prompt": "USER: <image>\nhi ASSISTANT:",
        "multi_modal_data": {"image": photos["astronaut"]},
    }
    out = engine.generate(prompt, params, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    assert engine.stats()["encoder_runs"] == 1
