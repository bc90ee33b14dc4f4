"""Penalties and token edits match HF transformers' logits processors on a tiny LLaVA (greedy,
same tokens), in the synchronous and the overlapped engine."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmcore import Engine, SamplingParams
from mmcore.engine.sampling_setup import tokenize_bad_words
from mmcore.testing.oracle import cached_hf, hf_inputs

MAX_TOKENS = 14  # the tiny model repeats itself after ~10 tokens


class OpenAIPenaltiesReference(LogitsProcessor):
    """OpenAI's presence/frequency penalties, written straight from the formula:
    ``logit[t] -= count[t] * frequency + (count[t] > 0) * presence`` over generated tokens."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row in range(scores.shape[0]):
            counts: dict[int, int] = {}
            for token in input_ids[row, self.prompt_len :].tolist():
                counts[token] = counts.get(token, 0) + 1
            for token, count in counts.items():
                scores[row, token] -= count * self.frequency + self.presence
        return scores


@torch.inference_mode()
def _hf_tokens(model_dir: str, prompt: str, images: list, **generate_kwargs) -> list[int]:
    model, _ = cached_hf(model_dir)
    inputs = hf_inputs(model_dir, prompt, images)
    prompt_len = inputs["input_ids"].shape[1]
    if "openai" in generate_kwargs:
        frequency, presence = generate_kwargs.pop("openai")
        generate_kwargs["logits_processor"] = LogitsProcessorList(
            [OpenAIPenaltiesReference(prompt_len, frequency, presence)]
        )
    out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, **generate_kwargs)
    new = out[0, prompt_len:].tolist()
    eos = model.generation_config.eos_token_id
    return next((new[: i + 1] for i, t in enumerate(new) if t == eos), new)


@pytest.fixture(scope="module")
def setup(tiny_llava_dir, photos):
    prompts = [
        ("USER: tell me a story about a dog and a cat\nASSISTANT:", []),
        ("USER: <image>\nDescribe the picture in detail.\nASSISTANT:", [photos["chelsea"]]),
    ]
    engine = Engine(tiny_llava_dir)
    plain = _run(engine, prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    return engine, prompts, plain


def _engine_prompts(prompts):
    return [
        {"prompt": p, "multi_modal_data": {"image": imgs}} if imgs else p for p, imgs in prompts
    ]


def _run(engine, prompts, params):
    outputs = engine.generate(_engine_prompts(prompts), params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def _cases(engine, plain):
    tok = engine.get_tokenizer()
    eos = tok.eos_token_id
    # A multi-token bad word taken from what the model would say, and a single-token one.
    bad = [tok.decode(plain[0][2:4]).strip() or "cat", tok.decode(plain[1][:1]).strip() or "a"]
    bad_ids = tokenize_bad_words(tok, bad, engine.vocab_size)
    allowed = sorted(set(plain[0][1:6] + plain[1][1:6]) | {eos, 5, 6, 7})
    return {
        "repetition": (
            SamplingParams(repetition_penalty=1.8),
            dict(repetition_penalty=1.8),
        ),
        "repetition_below_one": (
            SamplingParams(repetition_penalty=0.6),
            dict(repetition_penalty=0.6),
        ),
        "frequency_presence": (
            SamplingParams(frequency_penalty=1.5, presence_penalty=2.0),
            dict(openai=(1.5, 2.0)),
        ),
        "logit_bias": (
            SamplingParams(logit_bias={plain[0][0]: -100.0, plain[1][1]: -100.0, 40: 6.0}),
            dict(sequence_bias=[[[plain[0][0]], -100.0], [[plain[1][1]], -100.0], [[40], 6.0]]),
        ),
        "bad_words": (SamplingParams(bad_words=bad), dict(bad_words_ids=bad_ids)),
        "allowed_token_ids": (
            SamplingParams(allowed_token_ids=allowed),
            dict(prefix_allowed_tokens_fn=lambda _batch, _ids: allowed),
        ),
        "min_tokens": (
            SamplingParams(min_tokens=4, logit_bias={eos: 80.0}),
            dict(min_new_tokens=4, sequence_bias=[[[eos], 80.0]]),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "repetition",
        "repetition_below_one",
        "frequency_presence",
        "logit_bias",
        "bad_words",
        "allowed_token_ids",
        "min_tokens",
    ],
)
def test_matches_hf_logits_processors(setup, tiny_llava_dir, case):
    engine, prompts, plain = setup
    params, hf_kwargs = _cases(engine, plain)[case]
    params.temperature, params.max_tokens = 0.0, MAX_TOKENS
    got = _run(engine, prompts, params)
    expected = [_hf_tokens(tiny_llava_dir, p, imgs, **hf_kwargs) for p, imgs in prompts]
    assert got == expected
    assert got != plain  # the edit changed the tokens, so the comparison means something
    if case == "min_tokens":
        assert [len(t) for t in got] == [5, 5]  # 4 tokens, then the boosted EOS
    assert engine.stats()["kv_blocks_used"] == 0


def test_overlapped_scheduling_counts_the_same_tokens(tiny_llava_dir, setup):
    """Counts updated on the device from the sampled tensor: the overlapped engine (whose
    steps never wait for the previous tokens) gives the same penalised tokens, also seeded
    random sampling with n=2."""
    sync, prompts, _ = setup
    greedy = SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, repetition_penalty=1.8, frequency_penalty=1.0
    )
    seeded = SamplingParams(
        temperature=1.0, seed=3, n=2, max_tokens=MAX_TOKENS, presence_penalty=1.5, min_tokens=3
    )
    overlapped = Engine(tiny_llava_dir, async_scheduling=True)
    for params in (greedy, seeded):
        a = sync.generate(_engine_prompts(prompts), params, use_tqdm=False)
        b = overlapped.generate(_engine_prompts(prompts), params, use_tqdm=False)
        assert [[c.token_ids for c in o.outputs] for o in a] == [
            [c.token_ids for c in o.outputs] for o in b
        ]
    assert overlapped.stats()["overlapped_steps"] > 0


def test_token_ids_outside_the_vocabulary_are_refused(setup):
    engine, _, _ = setup
    for params, field in (
        (SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
        (SamplingParams(allowed_token_ids=[1, 10**6]), "allowed_token_ids"),
    ):
        with pytest.raises(ValueError, match=field):
            engine.generate("hi", params, use_tqdm=False)
    assert not engine.has_unfinished_requests()
