"""The trained demo model on a CUDA GPU (bf16, the project's kernels) answers like on the CPU.

A trained model is decisive where random tiny ones have near-ties, so here bf16 on the GPU must
give the same answers as HF transformers on the CPU for nearly every held-out question.
"""

from __future__ import annotations

import functools

import pytest
import torch

import mmcore.demo
from mmcore.demo import evaluate

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_demo_model_on_gpu_is_accurate_and_agrees_with_hf_on_cpu():
    model_dir = mmcore.demo.default_model_path()
    answers = {"hf": [], "gpu": []}

    gpu_fn = functools.partial(evaluate.engine_generate, device="cuda")
    gpu = evaluate.evaluate(
        model_dir, n=200, seed=31, generate_fn=evaluate.recording(gpu_fn, answers["gpu"])
    )
    hf = evaluate.evaluate(
        model_dir,
        n=200,
        seed=31,
        generate_fn=evaluate.recording(evaluate.hf_generate, answers["hf"]),
    )
    print("gpu", gpu.to_json()["accuracy"], "hf", hf.to_json()["accuracy"])
    assert min(gpu.accuracy.values()) >= 0.95, gpu.to_json()
    assert evaluate.agreement(answers["hf"], answers["gpu"]) >= 0.98
