"""OpenAI server with a Qwen2-Audio: ``input_audio`` and ``audio_url`` parts answered as
Engine.chat answers them; bad clips are a 400 and the server serves on."""

from __future__ import annotations

import base64

import pytest
import requests

from mmcore import Engine, SamplingParams
from mmcore.server import BackgroundServer, MediaPolicy, ServerConfig
from mmcore.testing import speech
from mmcore.testing.tiny_audio_checkpoints import build_tiny_qwen2_audio

MODEL = "tiny-qwen-audio"
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def clip_wav() -> bytes:
    return speech.encode(speech.synthesize_speech("Good morning.", 16000), 16000, "wav")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir = build_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio_server"))
    config = ServerConfig(
        model_names=[MODEL], media=MediaPolicy(), log_level="warning", shutdown_timeout_s=10.0
    )
    with BackgroundServer(lambda: Engine(model_dir, seed=0), config) as srv:
        yield srv, Engine(model_dir, seed=0)


def _messages(part: dict, text: str) -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def _chat(server, messages) -> requests.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def test_input_audio_and_audio_url_parts_answer_as_engine_chat(served, clip_wav):
    server, oracle = served
    encoded = base64.b64encode(clip_wav).decode()
    input_audio = {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}
    audio_url = {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + encoded}}
    expected = (
        oracle.chat(
            _messages(input_audio, "What is said?"),
            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .text
    )
    for part in (input_audio, audio_url):
        reply = _chat(server, _messages(part, "What is said?"))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == expected


@pytest.mark.parametrize(
    ("part", "fragment"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "!!notbase64", "format": "wav"}},
            "base64",
        ),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}}, "format"),
        ({"type": "input_audio", "input_audio": {"format": "wav"}}, "input_audio.data"),
        (
            {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(b"x" * 64).decode(), "format": "wav"},
            },
            "not a readable audio file",
        ),  # fmt: skip
    ],
)
def test_bad_audio_parts_get_400_and_the_server_serves_on(served, clip_wav, part, fragment):
    server, _ = served
    reply = _chat(server, _messages(part, "What is said?"))
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]
    encoded = base64.b64encode(clip_wav).decode()
    good = {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}
    assert _chat(server, _messages(good, "again?")).status_code == 200
