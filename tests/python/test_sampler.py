"""Sampler: greedy, filters, per-request seeds, logprobs."""

import pytest
import torch

from mmcore.sampling.sampler import _filter_logits, sample
from mmcore.sampling_params import SamplingParams


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_greedy_is_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 4.9]])
    out = sample(logits, [SamplingParams(temperature=0.0)] * 2, _gens(2))
    assert out.token_ids == [1, 0]
    assert out.logprobs == [None, None]


def test_top_k_one_is_greedy_even_with_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    out = sample(logits, [SamplingParams(temperature=2.0, top_k=1)], _gens(1))
    assert out.token_ids == [1]


def test_seeded_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=1.0, seed=7)] * 4
    alone = sample(logits[2:3], params[:1], [torch.Generator().manual_seed(7)])
    batch = sample(logits, params, [torch.Generator().manual_seed(7) for _ in range(4)])
    assert batch.token_ids[2] == alone.token_ids[0]


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[sample(logits, [SamplingParams(temperature=1.0)], [g]).token_ids[0]] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


@pytest.mark.parametrize(
    "params,allowed",
    [
        (SamplingParams(top_k=2), {0, 1}),
        (SamplingParams(top_p=0.75), {0, 1}),
        (SamplingParams(top_p=0.5), {0}),
        (SamplingParams(min_p=0.3), {0, 1}),
        (SamplingParams(min_p=0.1), {0, 1, 2}),
    ],
)
def test_filters_keep_exactly_the_allowed_tokens(params, allowed):
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.08, 0.02]]))
    kept = torch.isfinite(_filter_logits(logits, [params]))[0].nonzero().flatten().tolist()
    assert set(kept) == allowed


def test_logprobs_hold_top_n_and_the_chosen_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = sample(logits, [SamplingParams(temperature=0.0, logprobs=2)], _gens(1))
    entry = out.logprobs[0]
    # The chosen token first, then the top 2, with 1-based ranks.
    assert entry.token_ids == [0, 0, 1]
    assert entry.ranks == [1, 1, 2]
    assert entry.logprobs[0] == pytest.approx(torch.log(torch.tensor(0.5)).item(), abs=1e-5)
    assert entry.logprobs[2] == pytest.approx(torch.log(torch.tensor(0.3)).item(), abs=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n must"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"logprobs": -2}, "logprobs"),
        ({"prompt_logprobs": -3}, "prompt_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"bad_words": [""]}, "bad_words"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"stop": ["x"], "detokenize": False}, "detokenize"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ],
)
def test_out_of_range_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
