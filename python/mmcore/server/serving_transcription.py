"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (OpenAI Audio API).

The audio is decoded in the input pool, split into 30 s windows (sub-requests of the one HTTP
request, all submitted at once so they run batched), the language detected first when not
given, and the windows' results joined in order. ``stream=true`` sends OpenAI's
``transcript.text.delta`` events window after window, then ``transcript.text.done``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from mmcore.engine.transcription import (
    assemble,
    detected_language,
    detection_request,
    join_texts,
    split_audio,
    window_prompt,
)
from mmcore.models.interfaces import supports_encoder_decoder
from mmcore.sampling_params import SamplingParams
from mmcore.server.async_engine import EngineRequestError, RequestStream
from mmcore.server.errors import APIError, error_body
from mmcore.server.metrics import RequestRecorder
from mmcore.server.responses import CompletionAccumulator, sse_event
from mmcore.server.serving_common import (
    EngineStreamingResponse,
    ServerState,
    collect,
    iterate,
    new_request_id,
    process_and_submit,
    until_disconnect,
)
from mmcore.server.transcription_form import parse_transcription_form
from mmcore.server.transcription_formats import TIMED_FORMATS, format_response


def _processor(state: ServerState):
    processor = state.engine.engine.processor
    if not supports_encoder_decoder(processor) or not hasattr(processor, "tokens"):
        raise APIError(
            400,
            "the served model does not transcribe audio (a Whisper model does)",
            "invalid_model",
        )
    return processor


async def _submit(state: ServerState, request_id: str, prompt: dict, params, arrival: float):
    inputs = state.engine.engine.inputs
    return await process_and_submit(
        state, request_id, lambda: inputs.process(prompt), params, arrival
    )


def _collected(state: ServerState, stream: RequestStream, arrival: float):
    recorder = RequestRecorder(state.metrics, arrival, len(stream.prompt_token_ids))
    return collect(iterate(stream, recorder, 1), 1)


async def create_transcription(state: ServerState, raw_request: Request, task: str) -> Response:
    """Serve one transcription (``task="transcribe"``) or translation request."""
    arrival = time.monotonic()
    form = await parse_transcription_form(raw_request)
    state.check_model(form.model)
    processor = _processor(state)
    tokens = processor.tokens
    try:
        language = None if form.language is None else tokens.language_code(form.language)
        decoder_args = {"timestamps": form.response_format in TIMED_FORMATS}
        tokens.decoder_prompt(language, task, previous_text=form.prompt)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_value") from exc
    rate = processor.audio_sampling_rate
    options = state.engine.engine.inputs.media_options
    try:
        wave = await state.engine.run_in_pool(processor.load_media, "audio", form.audio, options)
    except ValueError as exc:
        raise APIError(400, f"invalid audio file: {exc}", "invalid_audio", param="file") from exc
    spans = split_audio(wave, rate, processor.window_seconds)
    request_id = new_request_id("trsc")
    if language is None and not tokens.multilingual:
        language = "en"
    if language is None:
        prompt, params = detection_request(processor, wave[slice(*spans[0])])
        stream = await _submit(state, f"{request_id}-lang", prompt, params, arrival)
        accs = await until_disconnect(raw_request, _collected(state, stream, arrival))
        if accs is None:
            return Response(status_code=499)
        language = detected_language(processor, accs[0].token_ids)
    ids = tokens.decoder_prompt(language, task, previous_text=form.prompt, **decoder_args)
    params = SamplingParams(temperature=form.temperature, logprobs=0, max_tokens=None)
    streams: list[RequestStream] = []
    try:
        for w, (start, end) in enumerate(spans):
            prompt = window_prompt(wave[start:end], ids, rate)
            streams.append(await _submit(state, f"{request_id}-{w}", prompt, params, arrival))
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    if form.stream:
        return EngineStreamingResponse(_stream(state, processor, streams, arrival), streams)

    async def collect_all():
        return await asyncio.gather(*(_collected(state, s, arrival) for s in streams))

    per_window = await until_disconnect(raw_request, collect_all())
    if per_window is None:
        return Response(status_code=499)
    windows = [(acc.token_ids, _sampled_logprobs(acc)) for (acc,) in per_window]
    result = assemble(processor, len(wave), spans, language, task, windows)
    return format_response(result, form.response_format, form.temperature)


def _sampled_logprobs(acc: CompletionAccumulator) -> list[float] | None:
    if len(acc.logprobs) != len(acc.token_ids):
        return None
    return [entry[t].logprob for t, entry in zip(acc.token_ids, acc.logprobs)]


async def _stream(
    state: ServerState, processor, streams: list[RequestStream], arrival: float
) -> AsyncIterator[str]:
    """Deltas of each window's text in order (later windows run meanwhile), then the whole."""
    tokens = processor.tokens
    texts: list[str] = []
    try:
        for stream in streams:
            recorder = RequestRecorder(state.metrics, arrival, len(stream.prompt_token_ids))
            ids: list[int] = []
            sent = ""
            prefix = " " if texts and texts[-1].strip() else ""
            async for update in iterate(stream, recorder, 1):
                for delta in update.deltas:
                    ids.extend(delta.token_ids)
                text = tokens.text(ids).strip()
                whole = update.finished or not text.endswith("\ufffd")  # whole characters only
                if whole and len(text) > len(sent) and text.startswith(sent):
                    piece = (prefix if not sent else "") + text[len(sent) :]
                    yield sse_event({"type": "transcript.text.delta", "delta": piece})
                    sent = text
            texts.append(tokens.text(ids))
        yield sse_event({"type": "transcript.text.done", "text": join_texts(texts)})
    except EngineRequestError as exc:
        yield sse_event(error_body(exc.status, str(exc), exc.code))
