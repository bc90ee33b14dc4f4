"""Gemma 3 on the GPU machine: the Engine on CUDA (paged-attention kernel with the image-span
bound ``attend_until`` and sliding windows, CUDA graphs of decode steps) against HF on the CPU.

Needs the kernels branch's ``attend_until`` in the CUDA paged-attention op. Run there:
``python -m pytest -q tests/python/test_gemma3_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.gemma3_oracle import hf_greedy, hf_inputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
IMG = "<start_of_image>"


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def _prompt(body: str) -> str:
    return f"<bos><start_of_turn>user\n{body}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def gemma3_head_dim_64(tmp_path_factory) -> str:
    """A tiny Gemma 3 whose LM has head dim 64 and SigLIP head dim 16, so the CUDA attention
    kernels run (half precision on a head dim they lack is an error, not a fallback)."""
    from mmcore.testing.tiny_gemma3 import build_tiny_gemma3

    text = {"hidden_size": 128, "head_dim": 64, "query_pre_attn_scalar": 64}
    vision = {"hidden_size": 64, "intermediate_size": 128}  # 4 heads of 16
    return build_tiny_gemma3(
        tmp_path_factory.mktemp("gemma3_d64"), text_overrides=text, vision_overrides=vision
    )


@pytest.mark.cuda
@needs_cuda
def test_engine_on_cuda_matches_hf(gemma3_head_dim_64):
    model_dir = gemma3_head_dim_64
    cases = [
        (_prompt(f"{IMG}What is this?"), [_image(64, 48, 5)]),
        (_prompt(f"{IMG} and {IMG} compare"), [_image(30, 90, 7), _image(50, 50, 8)]),
        (_prompt("A photo of an astronaut on the moon. " * 4), []),
        (_prompt("The cat sleeps. " * 3 + IMG), [_image(40, 40, 9)]),
    ]
    prompts = [{"prompt": t, "multi_modal_data": {"image": i}} if i else t for t, i in cases]
    expected = [hf_greedy(model_dir, hf_inputs(model_dir, t, i), 8) for t, i in cases]
    params = SamplingParams(temperature=0.0, max_tokens=8)
    gpu = Engine(model_dir, device="cuda", dtype="float32", max_num_seqs=8)
    got = gpu.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == expected
    chunked = Engine(model_dir, device="cuda", dtype="float32", max_num_batched_tokens=24)
    got = chunked.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == expected
    graphs = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8)
    eager = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8, enforce_eager=True)
    replayed = graphs.generate(prompts, params, use_tqdm=False)
    assert graphs.stats()["cuda_graph_steps"] > 0
    assert [o.outputs[0].token_ids for o in replayed] == [
        o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)
    ]


@pytest.mark.cuda
@needs_cuda
def test_hybrid_kv_cache_on_cuda_equals_keeping_every_block(gemma3_head_dim_64):
    """Freed sliding-window blocks (-1 table entries) on the CUDA kernels, eager and in CUDA
    graphs (per-group static tables): the same tokens as keeping every block, and the same as
    HF in float32."""
    model_dir = gemma3_head_dim_64
    body = "The rocket lifts off into a clear blue sky, leaving a trail of smoke. " * 8
    cases = [(_prompt(body + "What next?"), []), (_prompt(body + IMG + body), [_image(40, 60, 3)])]
    prompts = [{"prompt": t, "multi_modal_data": {"image": i}} if i else t for t, i in cases]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    options = dict(device="cuda", max_num_seqs=8, block_size=16, max_num_batched_tokens=64)
    tokens = {}
    for dtype in ("float32", "bfloat16"):
        for keep_all in (False, True):
            engine = Engine(
                model_dir, dtype=dtype, disable_hybrid_kv_cache_manager=keep_all, **options
            )
            out = engine.generate(prompts, params, use_tqdm=False)
            tokens[dtype, keep_all] = [o.outputs[0].token_ids for o in out]
            stats = engine.stats()
            assert (stats["num_sliding_blocks_freed"] > 0) is not keep_all
            if dtype == "bfloat16":
                assert stats["cuda_graph_steps"] > 0
    expected = [hf_greedy(model_dir, hf_inputs(model_dir, t, i), 40) for t, i in cases]
    assert tokens["float32", False] == tokens["float32", True] == expected
    assert tokens["bfloat16", False] == tokens["bfloat16", True]
