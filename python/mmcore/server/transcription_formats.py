"""OpenAI Audio API response bodies of a transcription: json, text, verbose_json, srt, vtt."""

from __future__ import annotations

from fastapi.responses import JSONResponse, PlainTextResponse, Response
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from mmcore.engine.transcription import Transcription

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
# Formats that need the model's timestamps (timed segments).
TIMED_FORMATS = frozenset({"verbose_json", "srt", "vtt"})
_SAMPLES_PER_SEEK = 160  # OpenAI's ``seek``: the window start in mel frames (10 ms)


def _clock(seconds: float, decimal: str) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(result: Transcription) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    cues = [
        f"{i + 1}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(result.segments)
    ]
    return "\n".join(cues)


def to_vtt(result: Transcription) -> str:
    """WebVTT: a header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in result.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_verbose_json(result: Transcription, temperature: float) -> dict:
    """OpenAI's ``TranscriptionVerbose``: language name, duration, text and segments.

    ``no_speech_prob`` is not estimated by mmcore and reported as 0.0.
    """
    windows = result.windows
    return {
        "task": result.task,
        "language": LANGUAGES.get(result.language or "", result.language or ""),
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "seek": int(round(windows[s.window][0] * 16000)) // _SAMPLES_PER_SEEK,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.token_ids,
                "temperature": temperature,
                "avg_logprob": s.avg_logprob if s.avg_logprob is not None else 0.0,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": 0.0,
            }
            for s in result.segments
        ],
    }


def format_response(result: Transcription, response_format: str, temperature: float) -> Response:
    """The HTTP response of ``result`` in ``response_format``."""
    if response_format == "json":
        return JSONResponse({"text": result.text})
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "verbose_json":
        return JSONResponse(to_verbose_json(result, temperature))
    if response_format == "srt":
        return PlainTextResponse(to_srt(result))
    return PlainTextResponse(to_vtt(result), media_type="text/vtt")
