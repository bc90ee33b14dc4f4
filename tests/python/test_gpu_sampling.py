"""The sampler on a CUDA GPU: every token edit, penalty and the grammar bitmask run without a
host sync; structured outputs validate with CUDA graphs and overlapped scheduling; penalised
tokens are the same with and without overlap."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

from mmcore import Engine, SamplingParams, StructuredOutputsParams
from mmcore.engine.staging import HostStaging
from mmcore.sampling.host_masks import HostMasks
from mmcore.sampling.request_state import DeviceCounts, build_request_sampling
from mmcore.sampling.sampler import sample_on_device
from mmcore.testing.tiny_checkpoints import build_tiny_llava

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["name", "tags", "score"],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    text = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
    vision = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}
    path = tmp_path_factory.mktemp("gpu_sampling")
    return build_tiny_llava(path, seed=3, text_overrides=text, vision_overrides=vision)


def _generator(i: int) -> torch.Generator:
    # Both kinds: device generators draw in place, CPU ones go through the staging buffers.
    return torch.Generator(device="cuda" if i % 2 else "cpu").manual_seed(i)


def test_sampling_with_every_edit_never_syncs():
    device = torch.device("cuda")
    vocab = 1000
    counts = DeviceCounts(vocab, device, initial_slots=2)
    staging = HostStaging(device)
    prompt = np.arange(10, 30)
    kinds = [
        SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(temperature=0.8, top_k=50, presence_penalty=1.0, min_tokens=3, seed=1),
        SamplingParams(temperature=0.0, logit_bias={5: 3.0, 7: -100.0}, logprobs=3),
        SamplingParams(temperature=1.0, top_p=0.9, allowed_token_ids=[1, 2, 3, 900]),
    ]
    rows = [
        build_request_sampling(p, _generator(i), counts, prompt, [[4], [8, 9]], [2])
        for i, p in enumerate(kinds)
    ]
    bitmask = torch.zeros((1, -(-vocab // 32)), dtype=torch.int32)
    bitmask[0, 0] = 0b1110  # the grammar allows tokens 1..3 only
    masks = HostMasks(
        bitmask_rows=np.array([3]),
        bitmask=bitmask,
        ban_rows=np.array([0]),
        ban_ids=np.array([9]),
    )
    logits = torch.randn(4, vocab, device=device)
    for _ in range(2):  # the second step reuses staging buffers and counts
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pending = sample_on_device(
                logits, rows, counts=counts, to_device=staging.to_device, host_masks=masks
            )
        finally:
            torch.cuda.set_sync_debug_mode("default")
        batch = pending.resolve()
    assert batch.token_ids[3] in (1, 2, 3)
    assert batch.token_ids[2] != 7
    assert batch.logprobs[2] is not None and len(batch.logprobs[2].token_ids) == 4
    assert int(counts.num_generated[rows[0].slot]) == 2


def test_structured_outputs_on_the_gpu_validate(model_dir):
    engine = Engine(model_dir, device="cuda")
    assert engine.async_scheduling
    constraint = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    params = SamplingParams(temperature=1.0, max_tokens=100, n=2, structured_outputs=constraint)
    outputs = engine.generate(
        [f"USER: item {i}\nASSISTANT:" for i in range(16)], params, use_tqdm=False
    )
    for output in outputs:
        for completion in output.outputs:
            assert completion.finish_reason == "stop"
            jsonschema.validate(json.loads(completion.text), SCHEMA)
    assert engine.stats()["cuda_graph_steps"] > 0


def test_penalised_tokens_are_the_same_with_and_without_overlap(model_dir):
    engine = Engine(model_dir, device="cuda")
    params = SamplingParams(
        temperature=0.0,
        max_tokens=24,
        ignore_eos=True,
        repetition_penalty=1.5,
        presence_penalty=1.0,
        frequency_penalty=0.5,
        bad_words=["the cat"],
    )
    prompts = [f"USER: tell me about {w}\nASSISTANT:" for w in ("dogs", "the moon", "rockets")]
    results = []
    for overlap in (False, True):
        engine.async_scheduling = overlap
        results.append(
            [o.outputs[0].token_ids for o in engine.generate(prompts, params, use_tqdm=False)]
        )
    assert results[0] == results[1]
    assert engine.stats()["overlapped_steps"] > 0
