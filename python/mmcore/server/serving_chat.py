"""``POST /v1/chat/completions``: messages with images in, a reply out (JSON or SSE), with
tool calls parsed from the reply when the request has tools."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mmcore.server.async_engine import EngineRequestError, RequestStream, StreamUpdate
from mmcore.server.errors import APIError, error_body
from mmcore.server.media_fetch import resolve_messages
from mmcore.server.metrics import RequestRecorder
from mmcore.server.protocol import ChatCompletionRequest
from mmcore.server.responses import (
    SSE_DONE,
    chat_chunk,
    chat_delta_choice,
    chat_logprobs,
    prompt_logprobs_json,
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
from mmcore.server.tool_parsers import get_tool_parser
from mmcore.server.tool_parsers.forced import RequiredToolCallsParser
from mmcore.server.tool_parsers.stream import ToolCallOutput

logger = logging.getLogger("mmcore.server")


def _tool_output_factory(
    state: ServerState, body: ChatCompletionRequest
) -> Callable[[], ToolCallOutput]:
    """How each completion's text becomes content and tool calls, by ``tool_choice``."""
    choice = body.effective_tool_choice
    if choice == "auto":
        if state.tool_call_parser is None:
            raise APIError(
                400,
                'tool_choice "auto" (the default when tools are given) needs the server started '
                "with --enable-auto-tool-choice and --tool-call-parser; or set tool_choice to "
                '"none", "required" or a named function',
                "invalid_value",
            )
        name = state.tool_call_parser
        return lambda: ToolCallOutput(parser=get_tool_parser(name))
    if choice == "required":
        return lambda: ToolCallOutput(parser=RequiredToolCallsParser())
    if choice == "named":
        name = body.tool_choice.function.name
        return lambda: ToolCallOutput(named_function=name)
    return ToolCallOutput


def _finish_reason(reason: str | None, output: ToolCallOutput, body: ChatCompletionRequest):
    # OpenAI reports a forced named call as "stop", a call the model chose as "tool_calls".
    if reason == "stop" and output.called and body.effective_tool_choice != "named":
        return "tool_calls"
    return reason


def _echo_text(body: ChatCompletionRequest) -> str:
    """With ``echo``, the reply starts with the last message's text when it is the assistant's
    (the message ``continue_final_message`` continues)."""
    last = body.messages[-1]
    if not body.echo or last.role != "assistant":
        return ""
    if isinstance(last.content, str):
        return last.content
    return "".join(p.get("text", "") for p in last.content or [] if p.get("type") == "text")


async def create_chat_completion(
    state: ServerState, body: ChatCompletionRequest, raw_request: Request
) -> Response:
    """Serve one chat completion request (see the OpenAI API reference)."""
    arrival = time.monotonic()
    model = state.check_model(body.model)
    params = sampling_params(
        lambda: body.to_sampling_params(state.sampling_defaults), len(state.tokenizer)
    )
    new_output = _tool_output_factory(state, body)
    engine = state.engine.engine
    messages = body.message_dicts()
    if body.user:
        logger.debug("chat request from user %r", body.user)

    def prepare():
        resolved = resolve_messages(messages, state.media)
        prompt = engine.chat_prompt(
            resolved,
            body.chat_template,
            tools=body.tool_dicts(),
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
        )
        return engine.inputs.process(body.with_processor_kwargs(prompt))

    request_id = new_request_id("chatcmpl")
    stream = await process_and_submit(state, request_id, prepare, params, arrival, body.timeout)
    recorder = RequestRecorder(state.metrics, arrival, len(stream.prompt_token_ids))
    updates = iterate(stream, recorder, params.n)
    top_k = body.top_logprobs or 0
    echo = _echo_text(body)
    if body.stream:
        outputs = [new_output() for _ in range(params.n)]
        return EngineStreamingResponse(
            _sse(state, body, stream, updates, model, top_k, outputs, echo), [stream]
        )
    accs = await until_disconnect(raw_request, collect(updates, params.n))
    if accs is None:
        return Response(status_code=499)
    choices = []
    for i, acc in enumerate(accs):
        output = new_output()
        message = output.message(acc.text)
        if echo and message.get("content") is not None:
            message["content"] = echo + message["content"]
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": chat_logprobs(state.tokenizer, acc.token_ids, acc.logprobs, top_k)
                if body.logprobs
                else None,
                "finish_reason": _finish_reason(acc.finish_reason, output, body),
            }
        )
    num_completion = sum(len(a.token_ids) for a in accs)
    body_json = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(len(stream.prompt_token_ids), num_completion),
    }
    if body.prompt_logprobs is not None:
        body_json["prompt_logprobs"] = prompt_logprobs_json(stream.prompt_logprobs)
    return JSONResponse(body_json)


async def _sse(
    state: ServerState,
    body: ChatCompletionRequest,
    stream: RequestStream,
    updates: AsyncIterator[StreamUpdate],
    model: str,
    top_k: int,
    outputs: list[ToolCallOutput],
    echo: str,
) -> AsyncIterator[str]:
    created = int(time.time())
    with_usage = body.include_usage or body.continuous_usage
    num_prompt = len(stream.prompt_token_ids)

    def chunk(choices, usage_value=None, prompt_logprobs=None):
        payload = chat_chunk(stream.request_id, created, model, choices, usage_value, with_usage)
        if prompt_logprobs is not None:
            payload["prompt_logprobs"] = prompt_logprobs_json(prompt_logprobs)
        return sse_event(payload)

    num_completion = 0
    running_usage = None
    try:
        first = {"role": "assistant", "content": echo}
        if body.continuous_usage:
            running_usage = usage(num_prompt, 0)
        yield chunk([chat_delta_choice(i, first, None) for i in range(body.n)], running_usage)
        async for update in updates:
            choices = []
            for d in update.deltas:
                num_completion += len(d.token_ids)
                logprobs = (
                    chat_logprobs(state.tokenizer, d.token_ids, d.logprobs or [], top_k)
                    if body.logprobs and d.token_ids
                    else None
                )
                output = outputs[d.index]
                delta = output.delta(d.text, final=d.finish_reason is not None)
                if logprobs and not delta:
                    delta = {"content": ""}
                reason = _finish_reason(d.finish_reason, output, body)
                choices.append(chat_delta_choice(d.index, delta, reason, logprobs))
            if choices or update.prompt_logprobs is not None:
                if body.continuous_usage:
                    running_usage = usage(num_prompt, num_completion)
                yield chunk(choices, running_usage, update.prompt_logprobs)
        if body.include_usage:
            yield chunk([], usage(num_prompt, num_completion))
    except EngineRequestError as exc:
        yield sse_event(error_body(exc.status, str(exc), exc.code))
    yield SSE_DONE
