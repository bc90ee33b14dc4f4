"""``POST /v1/chat/completions``: messages with images in, a reply out (JSON or SSE)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mmcore.server.async_engine import EngineRequestError, RequestStream, StreamUpdate
from mmcore.server.errors import error_body
from mmcore.server.media_fetch import resolve_messages
from mmcore.server.metrics import RequestRecorder
from mmcore.server.protocol import ChatCompletionRequest
from mmcore.server.responses import (
    SSE_DONE,
    chat_chunk,
    chat_delta_choice,
    chat_logprobs,
    sse_event,
    usage,
)
from mmcore.server.serving_common import (
    EngineStreamingResponse,
    ServerState,
    collect,
    iterate,
    new_request_id,
    process_and_submit,
    sampling_params,
    until_disconnect,
)


async def create_chat_completion(
    state: ServerState, body: ChatCompletionRequest, raw_request: Request
) -> Response:
    """Serve one chat completion request (see the OpenAI API reference)."""
    arrival = time.monotonic()
    model = state.check_model(body.model)
    params = sampling_params(body.to_sampling_params)
    engine = state.engine.engine
    messages = body.message_dicts()

    def prepare():
        resolved = resolve_messages(messages, state.media)
        return engine.inputs.process(engine.chat_prompt(resolved))

    request_id = new_request_id("chatcmpl")
    stream = await process_and_submit(state, request_id, prepare, params, arrival, body.timeout)
    recorder = RequestRecorder(state.metrics, arrival, len(stream.prompt_token_ids))
    updates = iterate(stream, recorder, params.n)
    top_k = body.top_logprobs or 0
    if body.stream:
        return EngineStreamingResponse(_sse(state, body, stream, updates, model, top_k), [stream])
    accs = await until_disconnect(raw_request, collect(updates, params.n))
    if accs is None:
        return Response(status_code=499)
    choices = []
    for i, acc in enumerate(accs):
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": acc.text},
                "logprobs": chat_logprobs(state.tokenizer, acc.token_ids, acc.logprobs, top_k)
                if body.logprobs
                else None,
                "finish_reason": acc.finish_reason,
            }
        )
    num_completion = sum(len(a.token_ids) for a in accs)
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(len(stream.prompt_token_ids), num_completion),
        }
    )


async def _sse(
    state: ServerState,
    body: ChatCompletionRequest,
    stream: RequestStream,
    updates: AsyncIterator[StreamUpdate],
    model: str,
    top_k: int,
) -> AsyncIterator[str]:
    created = int(time.time())
    with_usage = body.include_usage

    def chunk(choices, usage_value=None):
        return sse_event(
            chat_chunk(stream.request_id, created, model, choices, usage_value, with_usage)
        )

    num_completion = 0
    try:
        yield chunk(
            [
                chat_delta_choice(i, {"role": "assistant", "content": ""}, None)
                for i in range(body.n)
            ]
        )
        async for update in updates:
            choices = []
            for d in update.deltas:
                num_completion += len(d.token_ids)
                logprobs = (
                    chat_logprobs(state.tokenizer, d.token_ids, d.logprobs or [], top_k)
                    if body.logprobs and d.token_ids
                    else None
                )
                delta = {"content": d.text} if d.text or logprobs else {}
                choices.append(chat_delta_choice(d.index, delta, d.finish_reason, logprobs))
            if choices:
                yield chunk(choices)
        if with_usage:
            yield chunk([], usage(len(stream.prompt_token_ids), num_completion))
    except EngineRequestError as exc:
        yield sse_event(error_body(exc.status, str(exc), exc.code))
    yield SSE_DONE
