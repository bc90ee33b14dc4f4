"""bench/bench_gpu_serving.py without servers or a GPU: the workload both paths get (text fitted
to a token budget, reproducible from its seed) and the size of its Poisson load phases."""

from __future__ import annotations

import base64
import io
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

from mmcore.bench.workload import _WORDS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from bench_gpu_serving import build_requests, fit_text, load_phase_size  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tiny_llava_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_dir)


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("budget", [1, 5, 24, 64])
def test_fit_text_fills_the_budget_without_passing_it(tokenizer, budget):
    rng = np.random.default_rng(budget)
    for _ in range(5):
        text = fit_text(tokenizer, rng, budget)
        count = _count(tokenizer, text)
        assert count <= budget or len(text.split()) == 1
        # It stopped because the next word did not fit: within one word of the budget.
        longest_word = max(_count(tokenizer, " " + w) for w in _WORDS)
        assert count > budget - longest_word


def test_fit_text_refuses_an_empty_budget(tokenizer):
    with pytest.raises(ValueError, match="text_tokens"):
        fit_text(tokenizer, np.random.default_rng(0), 0)


def test_build_requests_same_seed_same_requests_distinct_images(tokenizer):
    make = lambda seed: build_requests(  # noqa: E731
        tokenizer, 4, text_tokens=12, output_len=7, image_size=40, seed=seed
    )
    first, again, other = make(3), make(3), make(4)
    assert first == again
    assert [r.text for r in first] != [r.text for r in other]
    urls = [r.image_urls[0] for r in first]
    assert len(set(urls)) == 4
    for req in first:
        assert req.output_len == 7 and len(req.image_urls) == 1
        png = base64.b64decode(req.image_urls[0].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size == (40, 40)
        assert req.messages()[0]["content"][-1] == {"type": "text", "text": req.text}


@pytest.mark.parametrize(
    "rate, expected",
    [(11.3, 300), (2.0, 120), (0.1, 20)],  # capped by requests, by seconds, floored
)
def test_load_phase_size(rate, expected):
    assert load_phase_size(rate, 300, 60.0, 20) == expected


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_load_phase_size_refuses_bad_rates(rate):
    with pytest.raises(ValueError, match="rate"):
        load_phase_size(rate, 300, 60.0, 20)
