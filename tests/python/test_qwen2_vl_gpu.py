"""Qwen2-VL on the GPU machine: mmcore's processor against HF's full processor (needs
torchvision, absent on the CPU CI machine), and the Engine on CUDA (M-RoPE rope kernel, CUDA
graphs of M-RoPE decode steps) against HF on the CPU.

Run there: ``python -m pytest -q tests/python/test_qwen2_vl_gpu.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.models.qwen2_vl.processor import expand_image_patches
from mmcore.multimodal.video import load_video
from mmcore.testing.qwen2_vl_oracle import hf_greedy, hf_inputs

needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="HF's video processor needs torchvision"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def _image(height: int, width: int, seed: int) -> Image.Image:
    """A smooth random image (bicubic-upsampled noise): resize kernels agree closely on it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def _video(num_frames: int, seed: int) -> np.ndarray:
    return np.stack([np.asarray(_image(36, 52, seed + i)) for i in range(num_frames)])


def _hf_layout(pixels: torch.Tensor) -> torch.Tensor:
    return expand_image_patches(pixels, 2, 2 * pixels.shape[1])


def _prompt(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.torchvision
@needs_torchvision
@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl"])
def test_processor_matches_hf_full_processor(variant, request):
    from transformers import AutoTokenizer, AutoVideoProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    model_dir = request.getfixturevalue(f"tiny_{variant}_dir")
    hf = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(model_dir),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        video_processor=AutoVideoProcessor.from_pretrained(model_dir),
    )
    engine = Engine(model_dir, device="cpu")
    images, video = [_image(70, 90, 1), _image(40, 200, 2)], _video(5, 3)
    text = _prompt(f"{IMG}{VID}and{IMG}")
    ours = engine.inputs.process(
        {"prompt": text, "multi_modal_data": {"image": images, "video": [video]}}
    )
    theirs = hf(text=[text], images=images, videos=[video], return_tensors="pt")
    assert ours.token_ids.tolist() == theirs["input_ids"][0].tolist()
    by_kind = {m: [it.data for it in ours.items if it.modality == m] for m in ("image", "video")}
    grids = torch.stack([d["image_grid_thw"] for d in by_kind["image"]])
    assert torch.equal(grids, theirs["image_grid_thw"])
    assert torch.equal(by_kind["video"][0]["video_grid_thw"], theirs["video_grid_thw"][0])
    for key, ours_pixels in (
        ("pixel_values", torch.cat([_hf_layout(d["pixel_values"]) for d in by_kind["image"]])),
        ("pixel_values_videos", by_kind["video"][0]["pixel_values_videos"]),
    ):
        diff = (ours_pixels - theirs[key]).abs()  # PIL vs torchvision bicubic resize
        assert diff.mean() < 0.02 and diff.max() < 0.5, (key, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def qwen2_5_vl_head_dim_64(tmp_path_factory) -> str:
    """A tiny Qwen2.5-VL whose LM has head dim 64, so the CUDA attention kernels run (and CUDA
    graphs can capture them) instead of the torch reference the 16-wide default would need."""
    from mmcore.testing.tiny_qwen2_vl import build_tiny_qwen2_vl

    text = {
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "mrope_section": [8, 12, 12]},
    }  # fmt: skip
    return build_tiny_qwen2_vl(
        tmp_path_factory.mktemp("qwen2_5_vl_d64"), variant="qwen2_5_vl", text_overrides=text
    )


@pytest.mark.cuda
@needs_cuda
def test_engine_on_cuda_matches_hf(qwen2_5_vl_head_dim_64):
    model_dir = qwen2_5_vl_head_dim_64
    cpu = Engine(model_dir, device="cpu")
    gpu = Engine(model_dir, device="cuda", dtype="float32", max_num_seqs=8)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    cases = [
        (_prompt(f"{IMG}What is this?"), [_image(64, 48, 5)], []),
        (_prompt(f"{VID}What happens?"), [], [_video(5, 6)]),
        (_prompt(f"{IMG}and{VID}"), [_image(30, 90, 7)], [_video(4, 8)]),
        (_prompt("just text here"), [], []),
    ]
    prompts, expected = [], []
    for text, images, videos in cases:
        data = {k: v for k, v in (("image", images), ("video", videos)) if v}
        prompts.append({"prompt": text, "multi_modal_data": data} if data else text)
        processed = [cpu.processor.process("video", [load_video(v)])[0] for v in videos]
        expected.append(hf_greedy(model_dir, hf_inputs(model_dir, text, images, processed), 8))
    got = gpu.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == expected
    # bf16: the CUDA kernels run and M-RoPE decode steps replay graphs, token for token as eager.
    graphs = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8)
    eager = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8, enforce_eager=True)
    replayed = graphs.generate(prompts, params, use_tqdm=False)
    assert graphs.stats()["cuda_graph_steps"] > 0
    assert [o.outputs[0].token_ids for o in replayed] == [
        o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)
    ]
