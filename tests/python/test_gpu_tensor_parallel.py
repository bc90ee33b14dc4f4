"""Tensor parallelism on 2 GPUs (NCCL): TP=2 against TP=1 on the same GPU.

Exact greedy parity in float32 (eager: the CUDA kernels take half types only, float32 runs the
torch references): the sharded GEMMs and the all-reduce sum in another order, which float32
absorbs on these tiny models. In bf16 with CUDA graphs and async scheduling (the GPU defaults)
the sums' order moves logits by bf16 steps, so near-ties may flip: most tokens must agree.
"""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_checkpoints import build_tiny_llava

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]

TEXT_D64 = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
VISION_D64 = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def _prompts():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = [
        {
            "prompt": f"USER: <image>\nWhat is shown {i}?\nASSISTANT:",
            "multi_modal_data": {"image": im},
        }
        for i, im in enumerate(images)
    ]
    return prompts + ["USER: tell me a story about a dog\nASSISTANT:"]


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("num_kv_heads", [2, 1])
@pytest.mark.parametrize("encoder_mode", ["weights", "data"])
def test_tp2_matches_tp1_on_gpu_float32(tmp_path, num_kv_heads, encoder_mode):
    model_dir = build_tiny_llava(
        tmp_path / "m",
        seed=3,
        text_overrides={**TEXT_D64, "num_key_value_heads": num_kv_heads},
        vision_overrides=VISION_D64,
    )
    kwargs = dict(
        device="cuda",
        dtype="float32",
        enforce_eager=True,
        max_num_seqs=8,
        kv_cache_memory_bytes=64 << 20,
    )
    expected = _tokens(Engine(model_dir, **kwargs).generate(_prompts(), GREEDY, use_tqdm=False))
    torch.cuda.empty_cache()
    engine = Engine(model_dir, tensor_parallel_size=2, mm_encoder_tp_mode=encoder_mode, **kwargs)
    try:
        assert _tokens(engine.generate(_prompts(), GREEDY, use_tqdm=False)) == expected
        assert engine.stats()["overlapped_steps"] > 0
    finally:
        engine.shutdown()


def test_tp2_bf16_with_cuda_graphs(tmp_path):
    model_dir = build_tiny_llava(
        tmp_path / "m", seed=3, text_overrides=TEXT_D64, vision_overrides=VISION_D64
    )
    kwargs = dict(device="cuda", dtype="bfloat16", max_num_seqs=8, kv_cache_memory_bytes=64 << 20)
    expected = _tokens(Engine(model_dir, **kwargs).generate(_prompts(), GREEDY, use_tqdm=False))
    torch.cuda.empty_cache()
    engine = Engine(model_dir, tensor_parallel_size=2, **kwargs)
    try:
        got = _tokens(engine.generate(_prompts(), GREEDY, use_tqdm=False))
        stats = engine.stats()
        assert stats["cuda_graph_steps"] > 0 and stats["overlapped_steps"] > 0
    finally:
        engine.shutdown()
    same = sum(a == b for g, e in zip(got, expected) for a, b in zip(g, e))
    assert same >= 0.7 * sum(len(e) for e in expected)


def _audio_prompts():
    import numpy as np

    rng = np.random.default_rng(0)
    clips = [
        (0.3 * np.sin(np.arange(16000 * 2) * 0.05)).astype(np.float32),
        (0.05 * rng.standard_normal(16000 * 3)).astype(np.float32),
    ]
    clip = "Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    prompts = []
    for i in range(3):
        turn = "".join(clip.format(n=n + 1) for n in range(i)) + f"Describe {i}."
        prompt = f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"
        prompts.append(
            {"prompt": prompt, "multi_modal_data": {"audio": clips[:i]}} if i else prompt
        )
    return prompts


def _build(kind: str, path):
    if kind == "llava_next":
        from mmcore.testing.tiny_checkpoints import build_tiny_llava_next

        return build_tiny_llava_next(path, seed=3, text_overrides={"num_key_value_heads": 2})
    from mmcore.testing.tiny_audio_checkpoints import build_tiny_qwen2_audio

    return build_tiny_qwen2_audio(path, seed=3)


@pytest.mark.parametrize("kind", ["llava_next", "qwen2_audio"])
def test_tp2_llava_next_and_qwen2_audio_with_prompt_logprobs_on_gpu(tmp_path, kind):
    """LLaVA-NeXT (anyres tiles) and Qwen2-Audio (audio tower sharded by heads) at TP=2 on
    NCCL: greedy tokens equal TP=1, prompt log-probabilities (rank 0, pinned copies) too."""
    model_dir = _build(kind, tmp_path / "m")
    prompts = _prompts() if kind == "llava_next" else _audio_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, prompt_logprobs=2)
    kwargs = dict(
        device="cuda", dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20
    )
    single = Engine(model_dir, **kwargs).generate(prompts, params, use_tqdm=False)
    torch.cuda.empty_cache()
    engine = Engine(model_dir, tensor_parallel_size=2, **kwargs)
    try:
        got = engine.generate(prompts, params, use_tqdm=False)
    finally:
        engine.shutdown()
    assert _tokens(got) == _tokens(single)
    for tp_req, one_req in zip(got, single, strict=True):
        assert len(tp_req.prompt_logprobs) == len(one_req.prompt_logprobs) > 4
        for tp_pos, one_pos in zip(tp_req.prompt_logprobs[1:], one_req.prompt_logprobs[1:]):
            assert tp_pos.keys() == one_pos.keys()
            for token, logprob in tp_pos.items():
                assert abs(logprob.logprob - one_pos[token].logprob) <= 1e-4
