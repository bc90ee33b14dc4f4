"""Stream updates that pile up while the event loop is busy reach the client as one update."""

from __future__ import annotations

import asyncio

import pytest

from mmcore.server.async_engine import RequestStream
from mmcore.server.stream_updates import CompletionDelta, StreamUpdate, merge_updates


def _update(index: int, text: str, tokens: list[int], finish=None, logprobs=None) -> StreamUpdate:
    delta = CompletionDelta(index, text, tokens, logprobs, finish)
    return StreamUpdate([delta], finish is not None)


def test_merge_appends_text_tokens_logprobs_per_completion():
    a = StreamUpdate(
        [
            CompletionDelta(0, "Hel", [1], [{1: "x"}], None),
            CompletionDelta(1, "A", [7], None, None),
        ],
        False,
        prompt_logprobs=["p"],
    )
    b = StreamUpdate([CompletionDelta(0, "lo", [2, 3], [{2: "y"}, {3: "z"}], "stop")], False)
    merged = merge_updates(a, b)
    assert [(d.index, d.text, d.token_ids, d.finish_reason) for d in merged.deltas] == [
        (0, "Hello", [1, 2, 3], "stop"),
        (1, "A", [7], None),
    ]
    assert merged.deltas[0].logprobs == [{1: "x"}, {2: "y"}, {3: "z"}]
    assert merged.prompt_logprobs == ["p"] and not merged.finished


class _Engine:
    """What RequestStream asks of the engine: the next queued item; aborts recorded."""

    def __init__(self):
        self.aborted = []

    async def next_item(self, q):
        return await q.get()

    def abort(self, request_id):
        self.aborted.append(request_id)


def _stream(items):
    q = asyncio.Queue()
    for item in items:
        q.put_nowait(item)
    return RequestStream("r1", [1, 2], 0.0, q, _Engine())


def _collect(stream):
    async def run():
        return [u async for u in stream]

    return asyncio.run(run())


def test_piled_up_updates_arrive_as_one_and_the_stream_ends_when_finished():
    stream = _stream([_update(0, "a", [1]), _update(0, "b", [2]), _update(0, "c", [3], "length")])
    (only,) = _collect(stream)
    assert only.finished and only.deltas[0].text == "abc" and only.deltas[0].token_ids == [1, 2, 3]
    assert only.deltas[0].finish_reason == "length"
    assert stream._engine.aborted == []


def test_an_error_after_piled_up_updates_comes_after_them():
    stream = _stream([_update(0, "a", [1]), _update(0, "b", [2]), RuntimeError("engine died")])
    got = []

    async def run():
        async for u in stream:
            got.append(u)

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(run())
    assert len(got) == 1 and got[0].deltas[0].text == "ab" and not got[0].finished
