"""RequestOutput / CompletionOutput as vLLM shapes them: Logprob objects (rank, decoded
token), cumulative_logprob, prompt_logprobs (vs HF's forward, across chunked prefill),
num_cached_tokens, metrics; truncate_prompt_tokens, include_stop_str_in_output, detokenize."""

from __future__ import annotations

import math

import pytest
import torch

from mmcore import Engine, Logprob, SamplingParams
from mmcore.testing.oracle import cached_hf, hf_inputs

PROMPT = "USER: <image>\nDescribe the picture in detail, including colors.\nASSISTANT:"


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir)


@torch.inference_mode()
def _hf_prompt_log_probs(model_dir, prompt, images):
    model, _ = cached_hf(model_dir)
    inputs = hf_inputs(model_dir, prompt, images)
    logits = model(**inputs).logits[0].float()
    return inputs["input_ids"][0].tolist(), logits.log_softmax(-1)


def test_prompt_logprobs_match_hf_across_chunks(tiny_llava_dir, photos):
    engine = Engine(tiny_llava_dir, enable_chunked_prefill=True, max_num_batched_tokens=16)
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": photos["chelsea"]}}
    params = SamplingParams(temperature=0.0, max_tokens=3, n=2, prompt_logprobs=2)
    output = engine.generate(prompt, params, use_tqdm=False)[0]
    ids, log_probs = _hf_prompt_log_probs(tiny_llava_dir, PROMPT, [photos["chelsea"]])
    assert output.prompt_token_ids == ids
    assert len(ids) > 16  # the prompt took several chunks
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(ids)
    for position in range(1, len(ids)):
        entry = output.prompt_logprobs[position]
        actual = ids[position]
        reference = log_probs[position - 1]
        assert isinstance(entry[actual], Logprob)
        assert entry[actual].logprob == pytest.approx(reference[actual].item(), abs=1e-4)
        higher = lambda eps, ref=reference, tok=actual: int((ref > ref[tok] + eps).sum()) + 1  # noqa: E731
        assert higher(1e-4) <= entry[actual].rank <= higher(-1e-4)
        top2 = reference.topk(2).indices.tolist()
        assert set(top2) <= set(entry) and len(entry) <= 3
    assert engine.stats()["kv_blocks_used"] == 0


def test_sample_logprobs_are_logprob_objects(engine):
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=3)
    completion = engine.generate("USER: hello there\nASSISTANT:", params, use_tqdm=False)[
        0
    ].outputs[0]
    tok = engine.get_tokenizer()
    assert len(completion.logprobs) == len(completion.token_ids)
    total = 0.0
    for token_id, entry in zip(completion.token_ids, completion.logprobs):
        chosen = entry[token_id]
        assert chosen.rank == 1  # greedy picks the most likely token
        assert chosen.decoded_token == tok.decode([token_id])
        assert len(entry) == 3 and sorted(lp.rank for lp in entry.values()) == [1, 2, 3]
        assert all(lp.logprob <= chosen.logprob for lp in entry.values())
        total += chosen.logprob
    assert completion.cumulative_logprob == pytest.approx(total)
    assert math.isfinite(completion.cumulative_logprob)


def test_num_cached_tokens_and_metrics(engine):
    prompt = "USER: the same long prompt " * 6 + "\nASSISTANT:"
    params = SamplingParams(temperature=0.0, max_tokens=4)
    first = engine.generate(prompt, params, use_tqdm=False)[0]
    second = engine.generate(prompt, params, use_tqdm=False)[0]
    block = engine.config.block_size
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == (len(second.prompt_token_ids) - 1) // block * block > 0
    m = second.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time
    assert m.first_token_time <= m.last_token_time <= m.finished_time
    assert m.time_in_queue == pytest.approx(m.first_scheduled_time - m.arrival_time)
    assert second.finished and second.outputs[0].finished()
    assert first.prompt_logprobs is None and first.outputs[0].logprobs is None
    assert first.outputs[0].cumulative_logprob is None


def test_truncate_prompt_tokens_keeps_the_last_tokens(engine, photos):
    long_ids = engine.get_tokenizer()("USER: tell me a story about a dog and a cat\nASSISTANT:")[
        "input_ids"
    ]
    params = SamplingParams(temperature=0.0, max_tokens=5, truncate_prompt_tokens=8)
    got = engine.generate({"prompt_token_ids": long_ids}, params, use_tqdm=False)[0]
    direct = engine.generate(
        {"prompt_token_ids": long_ids[-8:]},
        SamplingParams(temperature=0.0, max_tokens=5),
        use_tqdm=False,
    )[0]
    assert got.prompt_token_ids == long_ids[-8:]
    assert got.outputs[0].token_ids == direct.outputs[0].token_ids
    image_prompt = {"prompt": PROMPT, "multi_modal_data": {"image": photos["chelsea"]}}
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        engine.generate(image_prompt, SamplingParams(truncate_prompt_tokens=4), use_tqdm=False)
    # Keeping the image: its placeholder range moves with the cut.
    kept = engine.generate(
        image_prompt,
        SamplingParams(temperature=0.0, max_tokens=3, truncate_prompt_tokens=-1),
        use_tqdm=False,
    )[0]
    assert len(kept.outputs[0].token_ids) == 3
    assert not engine.has_unfinished_requests()


def test_stop_string_inclusion_and_no_detokenize(engine):
    base = SamplingParams(temperature=0.0, max_tokens=12)
    text = engine.generate("USER: hi\nASSISTANT:", base, use_tqdm=False)[0].outputs[0].text
    stop = text[3:5]
    assert stop.strip(), text
    cut = SamplingParams(temperature=0.0, max_tokens=12, stop=[stop])
    kept = SamplingParams(
        temperature=0.0, max_tokens=12, stop=[stop], include_stop_str_in_output=True
    )
    silent = SamplingParams(temperature=0.0, max_tokens=12, detokenize=False)
    a, b, c = (
        engine.generate("USER: hi\nASSISTANT:", p, use_tqdm=False)[0].outputs[0]
        for p in (cut, kept, silent)
    )
    assert b.text == a.text + stop and b.text.endswith(stop) and not a.text.endswith(stop)
    assert a.stop_reason == b.stop_reason == stop
    assert c.text == "" and len(c.token_ids) > 0
