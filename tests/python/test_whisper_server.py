"""OpenAI Audio API on the server with a tiny Whisper: the ``openai`` client's
``audio.transcriptions.create`` / ``audio.translations.create`` for every response_format and
streamed, answered as ``Engine.transcribe`` answers; bad files and fields are 400, a file over
the limit 413, and the server serves on."""

from __future__ import annotations

import functools

import numpy as np
import openai
import pytest
import requests

from mmcore import Engine
from mmcore.server import BackgroundServer, MediaPolicy, ServerConfig
from mmcore.server.transcription_form import MAX_AUDIO_FILE_BYTES
from mmcore.server.transcription_formats import to_srt, to_vtt
from mmcore.testing import speech
from mmcore.testing.tiny_whisper import build_tiny_whisper

MODEL = "tiny-whisper"
RATE = 16000


@pytest.fixture(scope="module")
def clip():
    wave = speech.synthesize_speech("good morning, how are you today", RATE)
    return wave, speech.encode(wave, RATE, "wav")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper_server"))


@pytest.fixture(scope="module", params=[False, True], ids=["engine-thread", "engine-core-process"])
def served(request, whisper_dir):
    model_dir = whisper_dir
    config = ServerConfig(
        model_names=[MODEL],
        media=MediaPolicy(),
        log_level="warning",
        shutdown_timeout_s=10.0,
        engine_core_process=request.param,
    )
    factory = functools.partial(Engine, model_dir, max_num_seqs=4)
    with BackgroundServer(factory, config) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        yield srv, client, Engine(model_dir, max_num_seqs=4)


def test_every_response_format_answers_as_engine_transcribe(served, clip):
    _, client, oracle = served
    wave, wav = clip
    plain = oracle.transcribe((wave, RATE), language="en")
    timed = oracle.transcribe((wave, RATE), language="en", timestamps=True)
    assert plain.text  # the check below compares something

    def create(fmt):
        return client.audio.transcriptions.create(
            model=MODEL, file=("clip.wav", wav), language="en", response_format=fmt
        )

    assert create("json").text == plain.text
    assert create("text").strip() == plain.text
    verbose = create("verbose_json")
    assert verbose.text == timed.text and verbose.language == "english"
    assert verbose.duration == pytest.approx(len(wave) / RATE)
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [
        (s.start, s.end, s.text) for s in timed.segments
    ]
    assert create("srt").strip() == to_srt(timed).strip()
    assert create("vtt").strip() == to_vtt(timed).strip()


def test_streamed_deltas_join_to_the_transcription(served, clip):
    _, client, oracle = served
    wave, wav = clip
    expected = oracle.transcribe((wave, RATE), language="en").text
    events = list(
        client.audio.transcriptions.create(
            model=MODEL, file=("clip.wav", wav), language="en", stream=True
        )
    )
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and done[0].text == expected
    assert "".join(deltas) == expected


def test_long_audio_translation_detects_the_language(served, clip):
    _, client, oracle = served
    wave, _ = clip
    rng = np.random.default_rng(0)
    long_wave = np.concatenate([np.tile(wave, 20)[: RATE * 35], 0.01 * rng.standard_normal(RATE)])
    mp3 = speech.encode(long_wave.astype(np.float32), RATE, "mp3")
    expected = oracle.transcribe(mp3, task="translate")
    assert len(expected.windows) == 2
    result = client.audio.translations.create(model=MODEL, file=("long.mp3", mp3))
    assert result.text == expected.text


@pytest.mark.parametrize(
    ("fields", "files", "status", "fragment"),
    [
        ({"model": MODEL}, None, 400, "file is required"),
        ({"model": MODEL}, {"file": ("x.wav", b"not audio at all" * 8)}, 400, "invalid audio"),
        ({"model": MODEL, "speed": "2"}, "clip", 400, "unknown fields"),
        ({"response_format": "xml"}, "clip", 400, "response_format"),
        ({"temperature": "3"}, "clip", 400, "temperature"),
        ({"temperature": "warm"}, "clip", 400, "temperature"),
        ({"language": "klingon"}, "clip", 400, "unsupported language"),
        ({"stream": "true", "response_format": "srt"}, "clip", 400, "stream"),
        ({"stream": "maybe"}, "clip", 400, "stream"),
        ({"timestamp_granularities[]": "word"}, "clip", 400, "granularity"),
        ({"model": "other"}, "clip", 404, "does not exist"),
        ({}, {"file": ("big.wav", b"\0" * (MAX_AUDIO_FILE_BYTES + 1))}, 413, "larger than"),
    ],
)
def test_bad_requests_get_openai_errors(served, clip, fields, files, status, fragment):
    server, _, _ = served
    files = {"file": ("clip.wav", clip[1])} if files == "clip" else files
    reply = requests.post(
        server.url + "/v1/audio/transcriptions", data=fields, files=files, timeout=120
    )
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]["message"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_json_body_is_refused(served):
    server, _, _ = served
    reply = requests.post(server.url + "/v1/audio/transcriptions", json={"file": "x"}, timeout=30)
    assert reply.status_code == 400
    assert "multipart" in reply.json()["error"]["message"]
