"""Two engine replicas (data parallel): requests repeating an image go to the replica that
already took it, so each image is encoded once; outputs equal one engine's."""

from __future__ import annotations

from test_engine_parity import _engine_prompts, _token_ids

from mmcore import Engine, SamplingParams
from mmcore.engine.data_parallel import DataParallelEngine

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


def test_requests_follow_their_image_and_totals_match(tiny_llava_dir, photos):
    a, c = photos["astronaut"], photos["chelsea"]
    prompts = _engine_prompts(
        [
            ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
            ("USER: <image>\nDescribe it.\nASSISTANT:", [a]),
            ("USER: <image>\nWhat colour?\nASSISTANT:", [c]),
            ("USER: <image>\nAgain?\nASSISTANT:", [c]),
            ("USER: tell me a story about a dog\nASSISTANT:", []),
        ]
    )
    single = Engine(tiny_llava_dir).generate(prompts, GREEDY, use_tqdm=False)
    engine = DataParallelEngine(tiny_llava_dir, data_parallel_size=2)
    outputs = engine.generate(prompts, GREEDY)
    assert _token_ids(outputs) == _token_ids(single)
    # astronaut -> replica 0 (both), chelsea -> replica 1 (the less loaded, then its own),
    # the text prompt to the less loaded of two equals (0).
    assert engine.routed == [3, 2]
    per_replica = [r.stats() for r in engine.replicas]
    # Each image encoded once, on its replica; its second request hit the encoder cache.
    assert [s["encoder_hits"] for s in per_replica] == [1, 1]
    assert engine.stats()["encoder_hits"] == 2
    # Later: the chelsea image comes back to replica 1 even though it is not less loaded.
    again = engine.generate([prompts[2]], GREEDY)
    assert _token_ids(again) == [_token_ids(single)[2]]
    assert engine.routed == [3, 3]
    assert engine.replicas[1].stats()["prefix_hits"] > 0
