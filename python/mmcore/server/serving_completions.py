"""``POST /v1/completions``: text or token-id prompts (one or a batch), JSON or SSE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mmcore.engine.chat_safety import tokenize_plain_text
from mmcore.server.async_engine import EngineRequestError, RequestStream, StreamUpdate
from mmcore.server.errors import APIError, error_body
from mmcore.server.metrics import RequestRecorder
from mmcore.server.protocol import CompletionRequest
from mmcore.server.responses import (
    SSE_DONE,
    completion_chunk,
    completion_logprobs,
    prompt_logprobs_json,
    sse_event,
    usage,
)
from mmcore.server.serving_common import (
    EngineStreamingResponse,
    ServerState,
    collect,
    iterate,
    merge,
    new_request_id,
    process_and_submit,
    sampling_params,
    until_disconnect,
)


def _as_text_only(state: ServerState, prompt):
    """A string prompt tokenized with special token strings kept as plain text, unless the
    server allows prompts to carry control tokens (token-id prompts are taken as given)."""
    if not isinstance(prompt, str) or state.allow_special_tokens_in_prompts:
        return prompt
    return {"prompt_token_ids": tokenize_plain_text(state.tokenizer, prompt)}


async def create_completion(
    state: ServerState, body: CompletionRequest, raw_request: Request
) -> Response:
    """Serve one completions request; prompt ``p``'s completion ``i`` is choice ``p * n + i``."""
    arrival = time.monotonic()
    model = state.check_model(body.model)
    params = sampling_params(
        lambda: body.to_sampling_params(state.sampling_defaults), len(state.tokenizer)
    )
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported", "invalid_value")
    inputs = state.engine.engine.inputs
    response_id = new_request_id("cmpl")
    streams: list[RequestStream] = []
    try:
        for p, prompt in enumerate(body.prompt_list()):
            streams.append(
                await process_and_submit(
                    state,
                    f"{response_id}-{p}",
                    lambda pr=prompt: inputs.process(_as_text_only(state, pr)),
                    params,
                    arrival,
                    body.timeout,
                )
            )
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    updates = [
        iterate(s, RequestRecorder(state.metrics, arrival, len(s.prompt_token_ids)), params.n)
        for s in streams
    ]
    num_prompt = sum(len(s.prompt_token_ids) for s in streams)
    top_k = body.logprobs
    echoes = [_echo_text(state, p) if body.echo else "" for p in body.prompt_list()]
    if body.stream:
        return EngineStreamingResponse(
            _sse(state, body, response_id, updates, model, num_prompt, echoes), streams
        )

    async def collect_all():
        return await asyncio.gather(*(collect(u, params.n) for u in updates))

    per_prompt = await until_disconnect(raw_request, collect_all())
    if per_prompt is None:
        return Response(status_code=499)
    choices = []
    for p, accs in enumerate(per_prompt):
        for i, acc in enumerate(accs):
            choices.append(
                {
                    "index": p * params.n + i,
                    "text": echoes[p] + acc.text,
                    "logprobs": completion_logprobs(
                        state.tokenizer, acc.token_ids, acc.logprobs, top_k
                    )
                    if top_k is not None
                    else None,
                    "finish_reason": acc.finish_reason,
                }
            )
            if body.prompt_logprobs is not None:
                choices[-1]["prompt_logprobs"] = prompt_logprobs_json(streams[p].prompt_logprobs)
    num_completion = sum(len(a.token_ids) for accs in per_prompt for a in accs)
    return JSONResponse(
        {
            "id": response_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(num_prompt, num_completion),
        }
    )


async def _sse(
    state: ServerState,
    body: CompletionRequest,
    response_id: str,
    updates: list[AsyncIterator[StreamUpdate]],
    model: str,
    num_prompt: int,
    echoes: list[str],
) -> AsyncIterator[str]:
    created = int(time.time())
    with_usage = body.include_usage or body.continuous_usage
    n = body.n
    text_offsets: dict[int, int] = {}
    num_completion = 0
    try:
        if body.echo:
            choices = [
                {"index": p * n + i, "text": echo, "logprobs": None, "finish_reason": None}
                for p, echo in enumerate(echoes)
                for i in range(n)
            ]
            running = usage(num_prompt, 0) if body.continuous_usage else None
            yield sse_event(
                completion_chunk(response_id, created, model, choices, running, with_usage)
            )
        async for p, update in merge(updates):
            choices = []
            for d in update.deltas:
                index = p * n + d.index
                num_completion += len(d.token_ids)
                logprobs = None
                if body.logprobs is not None and d.token_ids:
                    logprobs = completion_logprobs(
                        state.tokenizer,
                        d.token_ids,
                        d.logprobs or [],
                        body.logprobs,
                        text_offsets.get(index, 0),
                    )
                text_offsets[index] = text_offsets.get(index, 0) + len(d.text)
                choices.append(
                    {
                        "index": index,
                        "text": d.text,
                        "logprobs": logprobs,
                        "finish_reason": d.finish_reason,
                    }
                )
                if update.prompt_logprobs is not None:
                    choices[-1]["prompt_logprobs"] = prompt_logprobs_json(update.prompt_logprobs)
            if choices:
                running = usage(num_prompt, num_completion) if body.continuous_usage else None
                yield sse_event(
                    completion_chunk(response_id, created, model, choices, running, with_usage)
                )
        if body.include_usage:
            yield sse_event(
                completion_chunk(
                    response_id, created, model, [], usage(num_prompt, num_completion), True
                )
            )
    except EngineRequestError as exc:
        yield sse_event(error_body(exc.status, str(exc), exc.code))
    yield SSE_DONE


def _echo_text(state: ServerState, prompt: str | dict[str, Any]) -> str:
    """The prompt as ``echo`` prepends it: the text given, or the given token ids decoded."""
    if isinstance(prompt, str):
        return prompt
    if "prompt" in prompt:
        return prompt["prompt"]
    return state.tokenizer.decode(prompt["prompt_token_ids"], skip_special_tokens=False)
