"""An exception attributable to one request fails that request; the engine goes on, the other
requests of the failed step are recomputed to the same tokens, and no KV block leaks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from server_fixtures import MODEL_NAME, user

import mmcore.engine.runner as runner_module
from mmcore import Engine, SamplingParams
from mmcore.server import BackgroundServer, ServerConfig

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
POISON_SEED = 666  # the injected fault fires for requests sampled with this seed
PROMPTS = ["a cat on a mat", "the quick brown fox", "hello there"]


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _mm_prompt(image: Image.Image, text: str) -> dict:
    return {"prompt": f"USER: <image>\n{text}\nASSISTANT:", "multi_modal_data": {"image": image}}


@pytest.fixture
def poisoned_sampler(monkeypatch):
    real = runner_module.sample_on_device

    def sample(logits, rows, **kwargs):
        if any(r.params.seed == POISON_SEED for r in rows):
            raise RuntimeError("injected sampler fault")
        return real(logits, rows, **kwargs)

    monkeypatch.setattr(runner_module, "sample_on_device", sample)


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "overlapped"])
def engine(request, tiny_llava_dir):
    return Engine(tiny_llava_dir, seed=0, async_scheduling=request.param)


@pytest.fixture(scope="module")
def reference(tiny_llava_dir):
    engine = Engine(tiny_llava_dir, seed=0)
    return [o.outputs[0].token_ids for o in engine.generate(PROMPTS, GREEDY, use_tqdm=False)]


def _assert_clean(engine: Engine) -> None:
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0
    engine.scheduler.check_invariants()


def test_sampler_fault_fails_only_its_request(engine, reference, poisoned_sampler):
    poisoned = SamplingParams(temperature=1.0, seed=POISON_SEED, max_tokens=6)
    outputs = engine.generate(
        [PROMPTS[0], "poisoned", PROMPTS[1], PROMPTS[2]],
        [GREEDY, poisoned, GREEDY, GREEDY],
        use_tqdm=False,
    )
    bad = outputs[1]
    assert bad.finished and bad.outputs[0].finish_reason == "error"
    assert "injected sampler fault" in bad.error
    good = [outputs[0], outputs[2], outputs[3]]
    assert [o.outputs[0].token_ids for o in good] == reference
    assert all(o.error is None for o in good)
    _assert_clean(engine)
    again = engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == reference


def test_fault_mid_generation_recomputes_the_others(engine, reference, monkeypatch):
    real = runner_module.sample_on_device
    calls = {"n": 0}

    def sample(logits, rows, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3 and any(r.params.seed == POISON_SEED for r in rows):
            raise RuntimeError("late fault")
        return real(logits, rows, **kwargs)

    monkeypatch.setattr(runner_module, "sample_on_device", sample)
    late = SamplingParams(temperature=0.0, seed=POISON_SEED, max_tokens=20, ignore_eos=True)
    outputs = engine.generate(PROMPTS + ["late"], [GREEDY] * 3 + [late], use_tqdm=False)
    assert outputs[3].outputs[0].finish_reason == "error"
    assert 0 < len(outputs[3].outputs[0].token_ids) < 20
    assert [o.outputs[0].token_ids for o in outputs[:3]] == reference
    _assert_clean(engine)


def test_recomputed_request_keeps_its_own_penalty_counts(tiny_llava_dir, monkeypatch):
    """A request recomputed after a failed step moves its counts to a fresh slot: a request added
    later never shares (and zeroes) it, so penalised tokens equal an undisturbed run."""
    penalised = SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, frequency_penalty=1.5
    )
    expected = Engine(tiny_llava_dir, seed=0).generate([PROMPTS[0]], penalised, use_tqdm=False)
    engine = Engine(tiny_llava_dir, seed=0)
    real = runner_module.sample_on_device
    calls = {"n": 0}

    def sample(logits, rows, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3 and any(r.params.seed == POISON_SEED for r in rows):
            raise RuntimeError("late fault")
        return real(logits, rows, **kwargs)

    monkeypatch.setattr(runner_module, "sample_on_device", sample)
    late = SamplingParams(temperature=0.0, seed=POISON_SEED, max_tokens=20, ignore_eos=True)
    engine.add_request("victim", PROMPTS[0], penalised)
    engine.add_request("late", "late", late)
    finished, added = {}, False
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if "late" in finished and not added:  # right after the recovery: a newcomer's slot
            engine.add_request("newcomer", PROMPTS[1], penalised)
            added = True
        counts = engine.runner.sampling_counts
        live = [s.sampling.slot for s in engine.runner.requests.values() if s.sampling.slot >= 0]
        assert len(live) == len(set(live)) and not set(live) & set(counts._free)
    assert finished["late"].outputs[0].finish_reason == "error"
    assert finished["victim"].outputs[0].token_ids == expected[0].outputs[0].token_ids
    _assert_clean(engine)


def test_encoder_fault_fails_only_the_request_with_that_image(tiny_llava_dir, monkeypatch):
    engine = Engine(tiny_llava_dir, seed=0)
    good_image, bad_image = _image(1), _image(2)
    bad_pixels = engine.inputs.process(_mm_prompt(bad_image, "x")).items[0].data["pixel_values"]
    clean = engine.generate(_mm_prompt(good_image, "what is it"), GREEDY, use_tqdm=False)[0]
    real_encode = engine.model.encode

    def encode(modality, data):
        if any(torch.equal(d["pixel_values"], bad_pixels) for d in data):
            raise ValueError("injected encoder fault")
        return real_encode(modality, data)

    monkeypatch.setattr(engine.model, "encode", encode)
    prompts = [_mm_prompt(good_image, "what is it"), _mm_prompt(bad_image, "and this")]
    outputs = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert outputs[1].outputs[0].finish_reason == "error"
    assert "injected encoder fault" in outputs[1].error
    assert outputs[0].outputs[0].token_ids == clean.outputs[0].token_ids
    _assert_clean(engine)
    # The same bad image again: its encoder entry was never computed; it fails alone again.
    again = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert again[1].outputs[0].finish_reason == "error"
    assert again[0].outputs[0].token_ids == clean.outputs[0].token_ids
    _assert_clean(engine)


def test_out_of_memory_aborts_the_newest_and_lowers_the_batch_limit(
    tiny_llava_dir, reference, monkeypatch
):
    engine = Engine(tiny_llava_dir, seed=0, max_num_seqs=8)
    real_forward = engine.model.forward
    fired = {"n": 0}

    def forward(embeds, positions, kv_caches, attn):
        if len(attn.seq_lens) >= 3 and fired["n"] == 0:
            fired["n"] += 1
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real_forward(embeds, positions, kv_caches, attn)

    monkeypatch.setattr(engine.model, "forward", forward)
    prompts = PROMPTS + ["the newest one"]
    outputs = engine.generate(prompts, GREEDY, use_tqdm=False)
    reasons = [o.outputs[0].finish_reason for o in outputs]
    assert fired["n"] == 1
    assert reasons[-1] == "error" and "out of memory" in outputs[-1].error
    survivors = [o.outputs[0].token_ids for o, r in zip(outputs[:3], reasons) if r != "error"]
    assert survivors and all(t in reference for t in survivors)
    assert engine.scheduler.max_num_seqs == 2  # half of the 4 requests of the failed step
    _assert_clean(engine)


def test_server_answers_the_faulty_request_with_an_error_and_serves_the_next(
    tiny_llava_dir, poisoned_sampler
):
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical")
    with BackgroundServer(lambda: Engine(tiny_llava_dir, seed=0), config) as srv:
        url = srv.url + "/v1/chat/completions"
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 4}
        bad = requests.post(url, json={**body, "seed": POISON_SEED}, timeout=30)
        assert bad.status_code == 500
        assert bad.json()["error"]["code"] == "request_failed"
        with requests.post(
            url, json={**body, "seed": POISON_SEED, "stream": True}, stream=True, timeout=30
        ) as response:
            events = [line for line in response.iter_lines() if line.startswith(b"data: ")]
        assert json.loads(events[-2][len("data: ") :])["error"]["code"] == "request_failed"
        assert events[-1] == b"data: [DONE]"
        good = requests.post(url, json=body, timeout=30)
        assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
