"""The engine on a CUDA GPU with ``kv_cache_dtype="fp8"``: the FP8 kernels end to end, CUDA graphs
included, close to the bf16 KV cache (needs a GPU and the built mmcore._kernels).

Tolerances: a random tiny model has many near-ties (see test_gpu_engine.py), so greedy tokens
must match the bf16-cache run on >= 70% of positions, and the next-token KL(bf16 KV || fp8 KV)
over every prompt position must stay below 1e-2 on average (bf16 vs FP8 here: 5.8e-3 measured
on an H200 on 2026-11-30; the CPU test compares against float32 with 5e-3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_checkpoints import build_tiny_llava

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Head dim 64 in the LM and the vision tower (the sizes test_gpu_engine.py uses).
TEXT_D64 = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
VISION_D64 = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("gpu_fp8_llava")
    return build_tiny_llava(path, seed=3, text_overrides=TEXT_D64, vision_overrides=VISION_D64)


def _prompts() -> list:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((64, 64), (40, 300), (427, 60))
    ]
    prompts = [f"USER: tell me story number {i} about a dog.\nASSISTANT:" for i in range(4)]
    for i, img in enumerate(images):
        prompts.append(
            {"prompt": f"USER: <image>\nDescribe it {i}.\nASSISTANT:",
             "multi_modal_data": {"image": [img]}}
        )  # fmt: skip
    return prompts


def _prompt_distributions(out) -> torch.Tensor:
    rows = [lp for lp in out.prompt_logprobs if lp is not None]
    vocab = max(max(r) for r in rows) + 1
    dense = torch.full((len(rows), vocab), -math.inf)
    for i, row in enumerate(rows):
        for tok, lp in row.items():
            dense[i, tok] = lp.logprob
    return dense


def test_fp8_kv_engine_with_cuda_graphs_close_to_bf16_kv(model_dir):
    prompts = _prompts()
    budget = 32 << 20
    base = Engine(model_dir, device="cuda", seed=0, kv_cache_memory_bytes=budget)
    fp8 = Engine(
        model_dir, device="cuda", seed=0, kv_cache_memory_bytes=budget, kv_cache_dtype="fp8"
    )
    assert fp8.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
    assert fp8.config.num_blocks == 2 * base.config.num_blocks  # bf16 -> e4m3: half the bytes
    assert fp8.runner.use_decode_graphs, "FP8 caches must keep the decode CUDA graphs"
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, prompt_logprobs=-1)
    want = base.generate(prompts, greedy, use_tqdm=False)
    got = fp8.generate(prompts, greedy, use_tqdm=False)
    assert fp8.stats()["cuda_graph_steps"] >= 8
    pairs = [
        (a, b)
        for w, g in zip(want, got)
        for a, b in zip(w.outputs[0].token_ids, g.outputs[0].token_ids)
    ]
    same = sum(a == b for a, b in pairs) / len(pairs)
    kl = torch.cat(
        [
            F.kl_div(_prompt_distributions(g), _prompt_distributions(w), log_target=True,
                     reduction="none").sum(-1)
            for w, g in zip(want, got)
        ]
    )  # fmt: skip
    print(f"gpu fp8 kv: tokens equal {same:.3f}, KL mean {kl.mean():.2e} max {kl.max():.2e}")
    assert same >= 0.7
    assert kl.mean() < 1e-2
