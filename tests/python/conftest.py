"""Session-wide fixtures: tiny HF checkpoints (built once) and real photos from scikit-image."""

from __future__ import annotations

import os
import warnings

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a failure there reproduces); developers explore new
# random examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

warnings.filterwarnings("ignore", message=".*requires torchvision.*")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> str:
    """A tiny LLaVA-1.5 checkpoint (GQA LM, feature layer -2, CLS dropped)."""
    from mmcore.testing.tiny_checkpoints import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory) -> str:
    """A tiny LLaVA-NeXT checkpoint (anyres 32px tiles, llama3 rope, feature layers [-3, -1])."""
    from mmcore.testing.tiny_checkpoints import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"), seed=0)


@pytest.fixture(scope="session")
def photos() -> dict:
    """Real RGB photos of different sizes and aspect ratios, name -> PIL image."""
    from PIL import Image
    from skimage import data

    full = {
        "astronaut": data.astronaut(),  # 512x512
        "chelsea": data.chelsea(),  # 300x451
        "coffee": data.coffee(),  # 400x600
        "camera": data.camera(),  # 512x512 grayscale
        "rocket": data.rocket(),  # 427x640
    }
    images = {name: Image.fromarray(array).convert("RGB") for name, array in full.items()}
    # Extreme aspect ratios exercise anyres padding/unpadding on both axes.
    images["rocket_tall"] = images["rocket"].crop((200, 0, 260, 427))  # 427 high, 60 wide
    images["coffee_wide"] = images["coffee"].resize((300, 40))  # 40 high, 300 wide
    return images


@pytest.fixture(scope="session")
def tiny_llava_next_mistral_dir(tmp_path_factory) -> str:
    """A tiny LLaVA-NeXT checkpoint over a Mistral LM (GQA, 24-token sliding window)."""
    from mmcore.testing.tiny_checkpoints import build_tiny_llava_next

    return build_tiny_llava_next(
        tmp_path_factory.mktemp("tiny_llava_next_mistral"), seed=1, text_model_type="mistral"
    )


@pytest.fixture(scope="session")
def tiny_model_dirs(tiny_llava_dir, tiny_llava_next_dir, tiny_llava_next_mistral_dir) -> dict:
    """name -> checkpoint folder of every tiny checkpoint the parity tests run on."""
    return {
        "llava": tiny_llava_dir,
        "llava_next": tiny_llava_next_dir,
        "llava_next_mistral": tiny_llava_next_mistral_dir,
    }


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory) -> str:
    """A tiny Qwen2-VL checkpoint (4 px patches, 2x2 merge, Qwen2 LM with M-RoPE)."""
    from mmcore.testing.tiny_qwen2_vl import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), variant="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory) -> str:
    """A tiny Qwen2.5-VL checkpoint (windowed vision blocks, absolute-time video M-RoPE)."""
    from mmcore.testing.tiny_qwen2_vl import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), variant="qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory) -> str:
    """A tiny InternVL 3 checkpoint (32 px tiles of 16 tokens, 1..6 tiles + thumbnail, InternViT
    with QK-norm and RMSNorm, Qwen2 LM)."""
    from mmcore.testing.tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("tiny_internvl"), seed=0)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory) -> str:
    """A tiny Gemma 3 checkpoint (SigLIP 32 px, 16 tokens per image; LM with sliding window 8)."""
    from mmcore.testing.tiny_gemma3 import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny_gemma3"))
