"""Speech to text with an encoder-decoder model (Whisper): windows, prompts, joined results.

Audio longer than the model's 30 s window is split into windows at quiet points (vLLM's
approach: in the last ``search_s`` seconds before each window end, the 100 ms frame with the
least energy), each window is one sub-request of the transcription, and their texts and
timestamped segments are joined in order, segment times shifted by the window start.

Without a language, it is detected as HF's ``WhisperForConditionalGeneration.detect_language``
does: one decoder step after ``<|startoftranscript|>`` on the first window, restricted to the
language tokens.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcore.models.interfaces import supports_encoder_decoder
from mmcore.sampling_params import SamplingParams

_ENERGY_FRAME_S = 0.1  # frames compared when looking for a quiet split point


@dataclass
class TranscriptionSegment:
    """A timed piece of a transcription (OpenAI's verbose_json segment).

    Attributes:
        id: index in the transcription.
        start, end: seconds from the start of the audio.
        text: the segment's text.
        token_ids: its generated tokens (timestamps left out).
        avg_logprob: mean log-probability of its tokens (None when not computed).
        compression_ratio: text bytes / zlib-compressed bytes (Whisper's repetition check).
        window: index of the 30 s window it comes from (OpenAI's ``seek`` is its start frame).
    """

    id: int
    start: float
    end: float
    text: str
    token_ids: list[int]
    avg_logprob: float | None
    compression_ratio: float
    window: int


@dataclass
class Transcription:
    """The result of :meth:`mmcore.Engine.transcribe`.

    Attributes:
        text: the whole text, windows joined in order.
        language: the language code used (given or detected).
        task: ``"transcribe"`` or ``"translate"``.
        duration: seconds of audio.
        segments: timed segments (one per window when the model wrote no timestamps).
        windows: ``(start, end)`` seconds of each window (sub-request), in order.
        token_ids: the tokens generated for each window.
    """

    text: str
    language: str | None
    task: str
    duration: float
    segments: list[TranscriptionSegment] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)


def split_audio(
    wave: np.ndarray, sampling_rate: int, window_s: float = 30.0, search_s: float = 1.0
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of at most ``window_s`` seconds covering ``wave``.

    Each cut but the last is placed at the quietest ``_ENERGY_FRAME_S`` frame of the last
    ``search_s`` seconds before the window would end, so words are rarely cut.
    """
    window = int(window_s * sampling_rate)
    search = int(search_s * sampling_rate)
    frame = max(1, int(_ENERGY_FRAME_S * sampling_rate))
    ranges, start, n = [], 0, len(wave)
    while n - start > window:
        end = start + window
        region = wave[end - search : end].astype(np.float64)
        usable = len(region) // frame * frame
        energy = (region[:usable].reshape(-1, frame) ** 2).mean(axis=1)
        cut = end - search + int(np.argmin(energy)) * frame + frame // 2
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges


def _whisper_processor(engine):
    processor = engine.processor
    if not supports_encoder_decoder(processor) or not hasattr(processor, "tokens"):
        raise ValueError(
            f"model {engine.config.model_path!r} does not transcribe audio (a Whisper model does)"
        )
    return processor


def window_prompt(samples: np.ndarray, decoder_ids: list[int], sampling_rate: int) -> dict:
    """The vLLM encoder/decoder prompt of one window."""
    return {
        "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (samples, sampling_rate)}},
        "decoder_prompt": {"prompt_token_ids": list(decoder_ids)},
    }


def detection_request(processor, samples: np.ndarray) -> tuple[dict, SamplingParams]:
    """Prompt and parameters of the language-detection step on ``samples``."""
    tokens = processor.tokens
    if not tokens.languages:
        raise ValueError("this model has no language tokens: pass a language")
    prompt = window_prompt(samples, [tokens.start_of_transcript], processor.audio_sampling_rate)
    params = SamplingParams(
        max_tokens=1, temperature=0.0, allowed_token_ids=sorted(tokens.languages.values())
    )
    return prompt, params


def detected_language(processor, token_ids: list[int]) -> str:
    by_id = {v: k for k, v in processor.tokens.languages.items()}
    return by_id[token_ids[0]]


def segments_of_window(
    processor,
    token_ids: list[int],
    logprobs: list[float] | None,
    window: int,
    span: tuple[int, int],
    first_id: int,
) -> list[TranscriptionSegment]:
    """The timed segments of one window's generated tokens, in audio time."""
    tokens = processor.tokens
    rate = processor.audio_sampling_rate
    offset, duration = span[0] / rate, (span[1] - span[0]) / rate
    out = []
    for seg in tokens.segments(token_ids, duration):
        text = tokens.text(seg.token_ids).strip()
        if not text:
            continue
        values = [logprobs[i] for i in seg.indices] if logprobs is not None else []
        data = text.encode()
        out.append(
            TranscriptionSegment(
                id=first_id + len(out),
                start=round(offset + seg.start, 3),
                end=round(offset + seg.end, 3),
                text=text,
                token_ids=seg.token_ids,
                avg_logprob=float(np.mean(values)) if values else None,
                compression_ratio=len(data) / max(1, len(zlib.compress(data))),
                window=window,
            )
        )
    return out


def join_texts(texts: list[str]) -> str:
    """Window texts joined by single spaces."""
    return " ".join(t.strip() for t in texts if t.strip())


def transcribe(
    engine,
    audio: Any,
    language: str | None = None,
    task: str = "transcribe",
    *,
    prompt: str | None = None,
    timestamps: bool = False,
    temperature: float = 0.0,
) -> Transcription:
    """See :meth:`mmcore.Engine.transcribe`."""
    processor = _whisper_processor(engine)
    tokens = processor.tokens
    if language is not None:
        language = tokens.language_code(language)
    tokens.decoder_prompt(language, task)  # checks the task before any decoding
    rate = processor.audio_sampling_rate
    wave = processor.load_media("audio", audio, engine.inputs.media_options)
    spans = split_audio(wave, rate, processor.window_seconds)
    if language is None and not tokens.multilingual:
        language = "en"
    if language is None:
        det_prompt, det_params = detection_request(processor, wave[slice(*spans[0])])
        (det,) = engine.generate([det_prompt], det_params, use_tqdm=False)
        language = detected_language(processor, det.outputs[0].token_ids)
    ids = tokens.decoder_prompt(language, task, timestamps=timestamps, previous_text=prompt)
    prompts = [window_prompt(wave[s:e], ids, rate) for s, e in spans]
    params = SamplingParams(temperature=temperature, logprobs=0, max_tokens=None)
    outputs = engine.generate(prompts, params, use_tqdm=False)
    windows = []
    for out in outputs:
        completion = out.outputs[0]
        logprobs = (
            [entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs)]
            if completion.logprobs is not None
            else None
        )
        windows.append((list(completion.token_ids), logprobs))
    return assemble(processor, len(wave), spans, language, task, windows)


def assemble(
    processor,
    num_samples: int,
    spans: list[tuple[int, int]],
    language: str | None,
    task: str,
    windows: list[tuple[list[int], list[float] | None]],
) -> Transcription:
    """Join the windows' generated tokens (and their log-probabilities) in order.

    Args:
        processor: the Whisper processor (tokens, sampling rate).
        num_samples: length of the whole waveform.
        spans: each window's sample range.
        language, task: as used.
        windows: per window, its generated token ids and their log-probabilities (or None).
    """
    rate = processor.audio_sampling_rate
    segments: list[TranscriptionSegment] = []
    for w, (span, (ids, logprobs)) in enumerate(zip(spans, windows, strict=True)):
        segments += segments_of_window(processor, ids, logprobs, w, span, len(segments))
    token_ids = [ids for ids, _ in windows]
    return Transcription(
        text=join_texts([processor.tokens.text(ids) for ids in token_ids]),
        language=language,
        task=task,
        duration=num_samples / rate,
        segments=segments,
        windows=[(s / rate, e / rate) for s, e in spans],
        token_ids=token_ids,
    )
