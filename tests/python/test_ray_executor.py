"""The Ray executor on a local two-node Ray cluster started here (``ray.cluster_utils``): one
rank per node, so steps travel through Ray's object store, not shared memory. Greedy tokens
must equal HF's; a killed rank fails the engine naming it."""

from __future__ import annotations

import time

import pytest
from test_engine_parity import _engine_prompts, _token_ids

from mmcore import Engine, SamplingParams
from mmcore.executor.errors import WorkerFailedError
from mmcore.testing.oracle import hf_greedy

ray = pytest.importorskip("ray")  # in the test extra; absent only outside CI

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ray_tp2_across_two_nodes_matches_hf(ray_cluster, tiny_llava_dir, photos):
    a, c = photos["astronaut"], photos["chelsea"]
    prompts = [
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: tell me a story about a dog\nASSISTANT:", []),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [a, c]),
    ]
    expected = [hf_greedy(tiny_llava_dir, p, imgs, MAX_TOKENS) for p, imgs in prompts]
    engine = Engine(
        tiny_llava_dir,
        tensor_parallel_size=2,
        distributed_executor_backend="ray",
        async_scheduling=True,
    )
    nodes = {
        ray.get(actor.rendezvous.remote()).rpartition(":")[0] for actor in engine.executor.actors
    }
    assert len(ray.nodes()) == 2 and nodes  # placed on the cluster's nodes
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    outputs = engine.generate(_engine_prompts(prompts), params, use_tqdm=False)
    assert _token_ids(outputs) == expected
    # Prompt log-probabilities come back from rank 0 through the object store, as on one rank.
    asks = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    ray_out = engine.generate(_engine_prompts(prompts), asks, use_tqdm=False)
    one_out = Engine(tiny_llava_dir).generate(_engine_prompts(prompts), asks, use_tqdm=False)
    for ray_req, one_req in zip(ray_out, one_out, strict=True):
        assert len(ray_req.prompt_logprobs) == len(one_req.prompt_logprobs) > 16
        for ray_pos, one_pos in zip(ray_req.prompt_logprobs[1:], one_req.prompt_logprobs[1:]):
            assert ray_pos.keys() == one_pos.keys()
            for token, logprob in ray_pos.items():
                assert logprob.rank == one_pos[token].rank
                assert abs(logprob.logprob - one_pos[token].logprob) <= 1e-5
    # Killing rank 1's actor mid-generation fails the engine, naming the rank.
    for i, (prompt, _) in enumerate(prompts[1:2]):
        engine.add_request(f"k{i}", prompt, SamplingParams(max_tokens=64, ignore_eos=True))
    engine.step()
    ray.kill(engine.executor.actors[1])
    start = time.monotonic()
    with pytest.raises(WorkerFailedError, match="rank 1"):
        for _ in range(10_000):
            engine.step()
    assert time.monotonic() - start < 30
    with pytest.raises(WorkerFailedError, match="rank 1"):
        engine.step()
