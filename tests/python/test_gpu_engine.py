"""The Engine on a CUDA GPU: bf16 weights and KV cache, the project's kernels, profiled KV size.

Greedy outputs on the GPU (bf16) must match the CPU path (float32) on the tiny checkpoints, built
here with head dim 64 so the CUDA attention kernels (not the torch fallback) run for both the LM
and the vision tower.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.engine.profiling import gpu_kv_cache_bytes, profile_peak_activation_bytes
from mmcore.kernels import ops
from mmcore.sampling.sampler import rows_from_params, sample_on_device
from mmcore.testing.tiny_checkpoints import build_tiny_llava, build_tiny_llava_next

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

NUM_TOKENS = 16
# Random tiny models have many near-ties (5% of steps have a top-2 margin under 0.09 nats): the
# CPU path itself in bf16 matches its float32 run on 80% / 60% of these prompts (fp16: 90% / 95%),
# because weights rounded to bf16 (8 significant bits) move logits by more than those margins.
# Every divergence must sit at an fp32 near-tie; the issue's 90% holds at fp16's precision.
MIN_MATCH_FRACTION = {"bfloat16": 0.7, "float16": 0.9}
NEAR_TIE = 0.25  # nats between the fp32 model's top two tokens
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
TOP2 = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2)
# Head dim 64 in the LM (256 / 4) and in the vision tower (128 / 2): a size the kernels take.
TEXT_D64 = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
VISION_D64 = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def model_dir(request, tmp_path_factory) -> str:
    build = build_tiny_llava if request.param == "llava" else build_tiny_llava_next
    path = tmp_path_factory.mktemp(f"gpu_{request.param}")
    return build(path, seed=3, text_overrides=TEXT_D64, vision_overrides=VISION_D64)


@pytest.fixture(scope="module")
def photos() -> dict:
    return synthetic_images()


def synthetic_images() -> dict:
    """Smooth random images of varied sizes and aspect ratios (no scikit-image on GPU hosts)."""
    rng = np.random.default_rng(0)
    sizes = {"square": (64, 64), "wide": (40, 300), "tall": (427, 60), "big": (512, 512)}
    images = {}
    for name, (h, w) in sizes.items():
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        images[name] = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return images


def _prompts(photos) -> list:
    """Twenty prompts: text only, one image and two images, of varied sizes and lengths."""
    names = sorted(photos)
    questions = ["What is this?", "Describe it.", "Colours?", "Say more about the picture now."]
    prompts = []
    for i in range(20):
        q = questions[i % len(questions)]
        if i % 5 == 0:
            prompts.append(f"USER: tell me story number {i} about a dog. {q}\nASSISTANT:")
        elif i % 5 == 4:
            imgs = [photos[names[i % len(names)]], photos[names[(i + 3) % len(names)]]]
            prompts.append(
                {
                    "prompt": f"USER: <image> vs <image>\n{q}\nASSISTANT:",
                    "multi_modal_data": {"image": imgs},
                }
            )
        else:
            img = photos[names[i % len(names)]]
            prompts.append(
                {
                    "prompt": f"USER: <image>\n{q} {i}\nASSISTANT:",
                    "multi_modal_data": {"image": [img]},
                }
            )
    return prompts


def _token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_gpu_engine_runs_bf16_with_kernels(model_dir):
    engine = Engine(model_dir, device="cuda", seed=0)
    assert engine.config.dtype == torch.bfloat16
    assert engine.runner.kv_caches[0][0].dtype == torch.bfloat16
    assert engine.runner.kv_caches[0][0].is_cuda
    query = torch.empty(1, 4, engine.model.head_dim, dtype=torch.bfloat16, device="cuda")
    assert ops.attention_kernel_supports(query, engine.runner.kv_caches[0][0])


def _divergences(got, reference) -> list[tuple[int, int, float]]:
    """(prompt, step, fp32 top-2 log-prob margin) where ``got`` first leaves the fp32 tokens."""
    found = []
    for p, (ids, ref) in enumerate(zip(got, reference)):
        ref_ids = ref.outputs[0].token_ids
        step = next((k for k, (a, b) in enumerate(zip(ids, ref_ids)) if a != b), None)
        if step is not None:
            top = sorted(
                (lp.logprob for lp in ref.outputs[0].logprobs[step].values()), reverse=True
            )
            found.append((p, step, top[0] - top[1]))
    return found


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_greedy_matches_cpu(model_dir, photos, dtype):
    prompts = _prompts(photos)
    cpu = Engine(model_dir, device="cpu", seed=0)
    reference = cpu.generate(prompts, TOP2, use_tqdm=False)
    gpu = Engine(model_dir, device="cuda", seed=0, dtype=dtype)
    assert gpu.runner.kv_caches[0][0].dtype == getattr(torch, dtype)
    got = _token_ids(gpu.generate(prompts, GREEDY, use_tqdm=False))
    assert all(len(ids) == NUM_TOKENS for ids in got)
    diverged = _divergences(got, reference)
    fraction = 1 - len(diverged) / len(prompts)
    print(f"\n{model_dir}: GPU {dtype} == CPU fp32 on first {NUM_TOKENS} tokens: {fraction:.2f}")
    # Half precision flips only near-ties of the fp32 model.
    assert all(margin < NEAR_TIE for _, _, margin in diverged), diverged
    assert fraction >= MIN_MATCH_FRACTION[dtype], diverged
    assert gpu.stats()["kv_blocks_used"] == 0


def test_gpu_batching_changes_greedy_tokens_only_at_near_ties(model_dir, photos):
    prompts = _prompts(photos)[:6]
    engine = Engine(model_dir, device="cuda", seed=0)
    batched = _token_ids(engine.generate(prompts, GREEDY, use_tqdm=False))
    alone = [engine.generate([p], TOP2, use_tqdm=False)[0] for p in prompts]
    # bf16 matmuls (and padded graph batches) differ by batch shape: near-ties may flip.
    diverged = _divergences(batched, alone)
    assert all(margin < NEAR_TIE for _, _, margin in diverged), diverged
    assert len(diverged) <= len(prompts) // 2, diverged


def test_decode_cuda_graphs_match_eager(model_dir, photos):
    prompts = _prompts(photos)
    eager = Engine(model_dir, device="cuda", seed=0, enforce_eager=True)
    reference = eager.generate(prompts, TOP2, use_tqdm=False)
    assert eager.stats()["cuda_graph_steps"] == 0
    graphs = Engine(model_dir, device="cuda", seed=0, max_num_seqs=12)
    got = _token_ids(graphs.generate(prompts, GREEDY, use_tqdm=False))
    # 20 prompts over 12 slots: decode batches of many sizes, padded to 1, 2, 4, 8 or 12.
    assert graphs.stats()["cuda_graph_steps"] >= NUM_TOKENS
    diverged = _divergences(got, reference)
    print(
        f"\n{model_dir}: graphs == eager on first {NUM_TOKENS} tokens: {1 - len(diverged) / 20:.2f}"
    )
    assert all(margin < NEAR_TIE for _, _, margin in diverged), diverged
    assert len(diverged) <= len(prompts) // 4, diverged


def test_profiled_peak_grows_with_batched_tokens(model_dir):
    engine = Engine(model_dir, device="cuda")
    kwargs = dict(
        max_num_seqs=8, max_model_len=512, block_size=16, encoder_budget=64,
        kv_dtype=torch.bfloat16,
    )  # fmt: skip
    small = profile_peak_activation_bytes(engine.model, engine.processor, num_tokens=256, **kwargs)
    large = profile_peak_activation_bytes(engine.model, engine.processor, num_tokens=4096, **kwargs)
    assert 0 < small < large
    free, total = torch.cuda.mem_get_info()
    kv = gpu_kv_cache_bytes(torch.device("cuda"), 0.5, large)
    assert 0 < kv <= 0.5 * total - (total - free) - large + (64 << 20)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        Engine(model_dir, device="cuda", gpu_memory_utilization=1.5)


def test_overlapped_scheduling_matches_sync(model_dir, photos):
    prompts = _prompts(photos)
    seeded = SamplingParams(
        temperature=0.8, top_p=0.95, seed=11, n=2, max_tokens=NUM_TOKENS, ignore_eos=True
    )
    unseeded = SamplingParams(temperature=1.0, top_k=50, max_tokens=NUM_TOKENS, ignore_eos=True)
    params = [GREEDY, seeded, unseeded, TOP2] * (len(prompts) // 4)
    sync = Engine(model_dir, device="cuda", seed=0, async_scheduling=False)
    expected = sync.generate(prompts, params, use_tqdm=False)
    overlapped = Engine(model_dir, device="cuda", seed=0)
    assert overlapped.async_scheduling  # the default on CUDA
    got = overlapped.generate(prompts, params, use_tqdm=False)
    stats = overlapped.stats()
    # Every request fits one batch and all join at step 0, so batches are the same in both
    # modes: the tokens must be bit-identical (greedy, seeded and unseeded sampling, n=2).
    assert [[c.token_ids for c in o.outputs] for o in got] == [
        [c.token_ids for c in o.outputs] for o in expected
    ]
    assert [[c.finish_reason for c in o.outputs] for o in got] == [
        [c.finish_reason for c in o.outputs] for o in expected
    ]
    assert stats["overlapped_steps"] >= NUM_TOKENS - 2
    assert stats["cuda_graph_steps"] >= NUM_TOKENS - 2
    assert stats["kv_blocks_used"] == 0
    assert sync.stats()["overlapped_steps"] == 0


def test_resolving_a_step_does_not_wait_for_steps_launched_after_it():
    logits = torch.randn(4, 100, device="cuda")
    greedy = [SamplingParams(temperature=0.0)] * 4
    pending = sample_on_device(
        logits, rows_from_params(greedy, [torch.Generator() for _ in range(4)])
    )
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU work queued behind the step's sampling
    start = time.perf_counter()
    tokens = pending.resolve().token_ids
    waited = time.perf_counter() - start
    torch.cuda.synchronize()
    assert tokens == logits.argmax(dim=-1).tolist()
    # The token copy was enqueued right after sampling: reading it must not wait for the sleep.
    assert waited < 0.2, waited


def test_lm_head_logits_are_not_rounded_to_the_model_dtype():
    from mmcore.layers.logits import logits_float32

    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(5, 256, device="cuda", generator=g).to(torch.bfloat16)
    weight = (torch.randn(1000, 256, device="cuda", generator=g) * 0.5).to(torch.bfloat16)
    got = logits_float32(hidden, weight)
    exact = hidden.double() @ weight.double().T
    rounded = (hidden @ weight.T).double()  # what a bf16 GEMM output would give
    assert got.dtype == torch.float32
    assert (got.double() - exact).abs().max() < 1e-3 < (rounded - exact).abs().max()
