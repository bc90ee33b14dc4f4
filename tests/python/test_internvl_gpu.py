"""InternVL on the GPU machine: mmcore's processor against HF's full ``InternVLProcessor``
(its video processor and fast image processor need torchvision, absent on the CPU CI machine),
and the Engine on CUDA against HF on the CPU.

Run there: ``python -m pytest -q tests/python/test_internvl_gpu.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.multimodal.processor import MediaOptions
from mmcore.multimodal.video import load_video
from mmcore.testing.internvl_oracle import hf_greedy, hf_inputs

needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="HF's video processor needs torchvision"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
IMG, VID = "<IMG_CONTEXT>\n", "<video>\n"


def _image(height: int, width: int, seed: int) -> Image.Image:
    """A smooth random image (bicubic-upsampled noise): resize kernels agree closely on it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def _video(num_frames: int, seed: int) -> np.ndarray:
    return np.stack([np.asarray(_image(36, 52, seed + i)) for i in range(num_frames)])


def _prompt(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.torchvision
@needs_torchvision
def test_processor_matches_hf_full_processor(tiny_internvl_dir):
    from transformers import AutoProcessor

    hf = AutoProcessor.from_pretrained(tiny_internvl_dir)
    engine = Engine(tiny_internvl_dir, device="cpu")
    images, video = [_image(70, 90, 1), _image(40, 200, 2)], _video(5, 3)
    text = _prompt(f"{IMG}{VID}and\n{IMG}")
    ours = engine.inputs.process(
        {"prompt": text, "multi_modal_data": {"image": images, "video": [video]}}
    )
    theirs = hf(text=[text], images=images, videos=[video], return_tensors="pt")
    assert ours.token_ids.tolist() == theirs["input_ids"][0].tolist()
    ours_pixels = torch.cat([engine.model.normalized_pixels(it.data) for it in ours.items])
    assert ours_pixels.shape == theirs["pixel_values"].shape
    diff = (ours_pixels - theirs["pixel_values"]).abs()  # PIL vs torchvision bicubic resize
    assert diff.mean() < 0.02 and diff.max() < 0.5, (diff.mean(), diff.max())


@pytest.mark.torchvision
@needs_torchvision
@pytest.mark.parametrize("total, wanted", [(8, 3), (30, 8), (7, 7), (100, 16)])
def test_num_frames_sampling_matches_hf(tiny_internvl_dir, total, wanted):
    from transformers import AutoVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = AutoVideoProcessor.from_pretrained(tiny_internvl_dir)
    theirs = hf.sample_frames(VideoMetadata(total_num_frames=total, fps=4.0), num_frames=wanted)
    engine = Engine(tiny_internvl_dir, device="cpu")
    frames = np.stack([np.full((8, 8, 3), i, dtype=np.uint8) for i in range(total)])
    clip = engine.processor.load_media("video", frames, MediaOptions(), {"num_frames": wanted})
    assert [int(f[0, 0, 0]) for f in clip.frames] == [int(i) for i in theirs]


@pytest.fixture(scope="module")
def internvl_head_dim_64(tmp_path_factory) -> str:
    """A tiny InternVL whose tower and LM have head dim 64, so the CUDA attention kernels run
    (and CUDA graphs capture them) instead of the torch reference."""
    from mmcore.testing.tiny_internvl import build_tiny_internvl

    text = {"hidden_size": 256, "intermediate_size": 256}
    return build_tiny_internvl(
        tmp_path_factory.mktemp("internvl_d64"),
        text_overrides=text,
        hidden_size=128,
        intermediate_size=256,
    )


@pytest.mark.cuda
@needs_cuda
def test_engine_on_cuda_matches_hf(internvl_head_dim_64):
    model_dir = internvl_head_dim_64
    cpu = Engine(model_dir, device="cpu")
    gpu = Engine(model_dir, device="cuda", dtype="float32", max_num_seqs=8)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    cases = [
        (_prompt(f"{IMG}What is this?"), [_image(64, 48, 5)], []),
        (_prompt(f"{VID}What happens?"), [], [_video(5, 6)]),
        (_prompt(f"{IMG}and\n{VID}"), [_image(30, 90, 7)], [_video(4, 8)]),
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
    # bf16: the CUDA kernels run and decode steps replay graphs, token for token as eager.
    graphs = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8)
    eager = Engine(model_dir, device="cuda", dtype="bfloat16", max_num_seqs=8, enforce_eager=True)
    replayed = graphs.generate(prompts, params, use_tqdm=False)
    assert graphs.stats()["cuda_graph_steps"] > 0
    assert [o.outputs[0].token_ids for o in replayed] == [
        o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)
    ]
