"""The multipart form of ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``,
checked field by field (400 naming the field; 413 for a file over the limit)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from mmcore.server.errors import APIError
from mmcore.server.transcription_formats import RESPONSE_FORMATS

MAX_AUDIO_FILE_BYTES = 25 << 20  # OpenAI's limit for uploaded audio
_FIELDS = {
    "file",
    "model",
    "language",
    "prompt",
    "temperature",
    "response_format",
    "stream",
    "timestamp_granularities[]",
    "timestamp_granularities",
}
_STREAMABLE = ("json", "text")


@dataclass
class TranscriptionForm:
    """A checked request.

    Attributes:
        audio: the uploaded file's bytes.
        model: the ``model`` field (None: the served model).
        language: source language code or name (None: detected).
        prompt: previous text to condition on.
        temperature: sampling temperature in [0, 1].
        response_format: one of :data:`RESPONSE_FORMATS`.
        stream: stream ``transcript.text.delta`` events (json / text only).
    """

    audio: bytes
    model: str | None
    language: str | None
    prompt: str | None
    temperature: float
    response_format: str
    stream: bool


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, "invalid_value", param=param)


def _text(form, name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise _bad(f"{name} is given {len(values)} times", name)
    if not values:
        return None
    if not isinstance(values[0], str):
        raise _bad(f"{name} must be a text field, not a file", name)
    return values[0]


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise _bad(f"{name} must be true or false, got {value!r}", name)


async def parse_transcription_form(request: Request) -> TranscriptionForm:
    """Read and check the multipart form.

    Raises:
        APIError: 400 for a malformed form, unknown field or bad value; 413 for a file over
            :data:`MAX_AUDIO_FILE_BYTES`.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise APIError(400, "the request must be multipart/form-data", "invalid_request")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # starlette's MultiPartException and parser errors
        raise APIError(400, f"malformed multipart form: {exc}", "invalid_request") from exc
    unknown = sorted(set(form.keys()) - _FIELDS)
    if unknown:
        raise _bad(f"unknown fields: {unknown}", unknown[0])
    uploads = form.getlist("file")
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise _bad("file is required: one audio file", "file")
    audio = await uploads[0].read(MAX_AUDIO_FILE_BYTES + 1)
    if len(audio) > MAX_AUDIO_FILE_BYTES:
        raise APIError(
            413, f"the audio file is larger than {MAX_AUDIO_FILE_BYTES >> 20} MB", "file_too_large"
        )
    if not audio:
        raise _bad("the audio file is empty", "file")
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise _bad(
            f"response_format must be one of {list(RESPONSE_FORMATS)}, got {response_format!r}",
            "response_format",
        )
    raw_temperature = _text(form, "temperature")
    try:
        temperature = 0.0 if raw_temperature is None else float(raw_temperature)
    except ValueError:
        raise _bad(
            f"temperature must be a number, got {raw_temperature!r}", "temperature"
        ) from None
    if not 0.0 <= temperature <= 1.0:
        raise _bad(f"temperature must be in [0, 1], got {temperature}", "temperature")
    stream = _bool(_text(form, "stream"), "stream")
    if stream and response_format not in _STREAMABLE:
        raise _bad(
            f"stream=true takes response_format json or text, not {response_format}", "stream"
        )
    granularities = form.getlist("timestamp_granularities[]") + form.getlist(
        "timestamp_granularities"
    )
    for g in granularities:
        if g != "segment":
            raise _bad(
                f"timestamp granularity {g!r} is not supported (only 'segment')",
                "timestamp_granularities",
            )
    if granularities and response_format != "verbose_json":
        raise _bad(
            "timestamp_granularities needs response_format verbose_json", "timestamp_granularities"
        )
    return TranscriptionForm(
        audio=audio,
        model=_text(form, "model"),
        language=_text(form, "language") or None,
        prompt=_text(form, "prompt") or None,
        temperature=temperature,
        response_format=response_format,
        stream=stream,
    )
