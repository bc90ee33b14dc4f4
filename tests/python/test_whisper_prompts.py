"""Whisper's decoder prompts, timestamp segments, window splitting and subtitle formats
(no model: fast unit tests)."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore.engine.transcription import Transcription, TranscriptionSegment, split_audio
from mmcore.models.whisper.prompts import WhisperTokens
from mmcore.server.transcription_formats import to_srt, to_verbose_json, to_vtt
from mmcore.testing.tiny_whisper import build_whisper_tokenizer

RATE = 16000


@pytest.fixture(scope="module")
def tokens():
    return WhisperTokens(build_whisper_tokenizer())


def test_decoder_prompts_follow_whisper(tokens):
    ids = build_whisper_tokenizer().convert_tokens_to_ids
    sot, en, de = ids("<|startoftranscript|>"), ids("<|en|>"), ids("<|de|>")
    assert tokens.decoder_prompt("en") == [sot, en, ids("<|transcribe|>"), ids("<|notimestamps|>")]
    assert tokens.decoder_prompt("German", "translate", timestamps=True) == [
        sot,
        de,
        ids("<|translate|>"),
    ]
    assert tokens.decoder_prompt(None) == [sot, ids("<|transcribe|>"), ids("<|notimestamps|>")]
    with_prev = tokens.decoder_prompt("en", previous_text="hello world")
    assert with_prev[0] == ids("<|startofprev|>") and with_prev[-4:] == tokens.decoder_prompt("en")
    with pytest.raises(ValueError, match="unsupported language"):
        tokens.decoder_prompt("xx")
    with pytest.raises(ValueError, match="task must be"):
        tokens.decoder_prompt("en", "summarize")
    english_only = WhisperTokens(build_whisper_tokenizer(), multilingual=False)
    assert english_only.decoder_prompt("en") == [sot, ids("<|notimestamps|>")]
    with pytest.raises(ValueError, match="cannot translate"):
        english_only.decoder_prompt(None, "translate")


def test_timestamp_tokens_split_text_into_segments(tokens):
    t0 = tokens.timestamp_begin
    hello = build_whisper_tokenizer().encode(" hello", add_special_tokens=False)
    world = build_whisper_tokenizer().encode(" world", add_special_tokens=False)
    ids = [t0, *hello, t0 + 50, t0 + 60, *world, t0 + 100, tokens.end_of_text]
    segments = tokens.segments(ids, duration=10.0)
    assert [(s.start, s.end) for s in segments] == [(0.0, 1.0), (1.2, 2.0)]
    assert tokens.text(segments[0].token_ids).strip() == "hello"
    assert [ids[i] for i in segments[1].indices] == world
    assert tokens.text(ids).strip() == "hello world"
    untimed = tokens.segments(hello, duration=3.0)  # no timestamps: one segment
    assert [(s.start, s.end) for s in untimed] == [(0.0, 3.0)]


def test_long_audio_splits_at_the_quietest_point_before_30_s():
    rng = np.random.default_rng(0)
    wave = (0.5 * rng.standard_normal(RATE * 70)).astype(np.float32)
    wave[int(29.4 * RATE) : int(29.6 * RATE)] = 0.0  # a pause inside the last second
    spans = split_audio(wave, RATE)
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == len(wave)
    assert all(e - s <= 30 * RATE for s, e in spans)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
    assert 29.4 * RATE <= spans[0][1] <= 29.6 * RATE
    assert split_audio(wave[: RATE * 30], RATE) == [(0, RATE * 30)]


def test_subtitles_and_verbose_json():
    segments = [
        TranscriptionSegment(0, 0.0, 1.5, "hello", [1], -0.5, 1.0, 0),
        TranscriptionSegment(1, 3661.25, 3662.0, "world", [2], None, 1.0, 1),
    ]
    result = Transcription(
        "hello world", "de", "transcribe", 3662.0, segments, [(0.0, 30.0), (30.0, 3662.0)]
    )
    assert to_srt(result) == (
        "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n01:01:01,250 --> 01:01:02,000\nworld\n"
    )
    assert to_vtt(result).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello\n")
    verbose = to_verbose_json(result, 0.0)
    assert verbose["language"] == "german" and verbose["duration"] == 3662.0
    assert [s["seek"] for s in verbose["segments"]] == [0, 3000]
    assert verbose["segments"][1]["avg_logprob"] == 0.0
