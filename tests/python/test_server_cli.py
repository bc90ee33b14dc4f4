# ruff: noqa: F811  (fixtures imported from server_fixtures are parameters here)
"""The command line: --help of every command, generate, bench serve/offline, API key, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import openai
import pytest
import requests
from server_fixtures import (  # noqa: F401  (pytest fixtures)
    MODEL_NAME,
    data_url,
    free_port,
    image_part,
    media_dir,
    oracle,
    png_bytes,
    server,
    user,
    wait_until,
)

from mmcore import Engine, SamplingParams
from mmcore.cli import main
from mmcore.server import BackgroundServer, ServerConfig


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--help"], "serve"),
        (["info", "--help"], "info"),
        (["generate", "--help"], "--image"),
        (["serve", "--help"], "--allowed-media-domains"),
        (["bench", "--help"], "offline"),
        (["bench", "serve", "--help"], "--request-rate"),
        (["bench", "offline", "--help"], "--images-per-request"),
    ],
)
def test_help(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert fragment in capsys.readouterr().out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "serve", "--request-rate", "-3"])
    assert exc.value.code == 2
    assert "request rate must be > 0" in capsys.readouterr().err


def test_generate_prints_the_engine_answer(tiny_llava_dir, oracle, tmp_path, capsys):
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes(21))
    assert (
        main(
            [
                "generate",
                "--model",
                tiny_llava_dir,
                "--image",
                str(path),
                "--max-tokens",
                "6",
                "Describe.",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    from PIL import Image

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.open(path).convert("RGB")},
                {"type": "text", "text": "Describe."},
            ],
        }
    ]
    expected = oracle.chat(messages, SamplingParams(temperature=0.0, max_tokens=6), use_tqdm=False)
    assert printed == expected[0].outputs[0].text.strip() + "\n"


def test_generate_defaults_to_the_demo_model(capsys):
    from mmcore.demo import EXAMPLE_QUESTIONS, example_image_path

    question = "What colour is the star?"
    assert main(["generate", "--image", str(example_image_path()), question]) == 0
    assert capsys.readouterr().out.strip() == EXAMPLE_QUESTIONS[question]


def test_server_over_the_demo_model_answers_about_the_example_picture():
    from mmcore.demo import EXAMPLE_QUESTIONS, default_model_path, example_image_path

    config = ServerConfig(model_names=["demo"], log_level="warning")
    with BackgroundServer(Engine(str(default_model_path())), config) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        picture = image_part(data_url(example_image_path().read_bytes()))
        for question in ("What colour is the star?", "How many shapes are there?"):
            reply = client.chat.completions.create(
                model="demo", messages=user(picture, question), temperature=0.0, max_tokens=16
            )
            assert reply.choices[0].message.content.strip() == EXAMPLE_QUESTIONS[question]


def test_bench_serve_against_the_test_server(server, capsys):
    argv = [
        "bench",
        "serve",
        "--base-url",
        server.url,
        "--num-prompts",
        "12",
        "--request-rate",
        "40",
    ]
    argv += ["--max-concurrency", "6", "--images-per-request", "2", "--image-size", "40x30"]
    argv += ["--input-len", "12", "--output-len", "5", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert summary["num_requests"] == 12 and summary["num_errors"] == 0
    assert summary["total_output_tokens"] == 12 * 5
    assert summary["request_throughput"] > 0 and summary["output_throughput"] > 0
    assert 0 < summary["ttft"]["p50"] <= summary["ttft"]["p99"] < 120
    assert 0 < summary["tpot"]["mean"] < 60


def test_bench_offline(tiny_llava_dir, capsys):
    argv = ["bench", "offline", "--model", tiny_llava_dir, "--num-prompts", "4"]
    argv += ["--image-size", "32x32", "--input-len", "8", "--output-len", "3", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert summary["num_errors"] == 0 and summary["total_output_tokens"] == 4 * 3
    assert summary["request_throughput"] > 0


def test_api_key_is_required(tiny_llava_dir):
    config = ServerConfig(model_names=[MODEL_NAME], api_key="sesame", log_level="warning")
    with BackgroundServer(Engine(tiny_llava_dir), config) as srv:
        anonymous = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            anonymous.models.list()
        assert exc.value.status_code == 401
        assert exc.value.body["code"] == "invalid_api_key"
        response = requests.post(srv.url + "/v1/chat/completions", json={}, timeout=10)
        assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
        keyed = openai.OpenAI(base_url=srv.url + "/v1", api_key="sesame", max_retries=0)
        reply = keyed.chat.completions.create(
            model=MODEL_NAME, messages=user("hi"), max_tokens=2, temperature=0.0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_llava_dir):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mmcore", "serve", tiny_llava_dir, "--port", str(port)]
    cmd += ["--served-model-name", MODEL_NAME, "llava-alias", "--log-level", "warning"]
    # vLLM's spellings of engine options are taken as they are.
    cmd += ["--shutdown-timeout", "30", "--dtype", "float", "--no-enable-prefix-caching"]
    cmd += ["--limit-mm-per-prompt", '{"image": 2}', "--mm-processor-kwargs", "{}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return requests.get(base + "/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        assert wait_until(healthy, timeout_s=90, interval_s=0.2), "server did not come up"
        listed = requests.get(base + "/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in listed] == [MODEL_NAME, "llava-alias"]
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model=MODEL_NAME,
            messages=user(image_part(data_url(png_bytes(3))), "tell me more"),
            max_tokens=64,
            temperature=0.0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        first = next(chunks)  # the request is in flight
        assert first.choices[0].delta.role == "assistant"
        proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
        finish = [
            c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason
        ]
        assert finish in (["length"], ["abort"])
        assert proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(base + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output = proc.stdout.read().decode(errors="replace")
        assert "Traceback" not in output, output


def test_background_server_stops_cleanly(tiny_llava_dir):
    srv = BackgroundServer(Engine(tiny_llava_dir), ServerConfig(log_level="warning")).start()
    thread_engine = srv.state.engine
    assert requests.get(srv.url + "/health", timeout=10).status_code == 200
    srv.stop()
    assert wait_until(lambda: not thread_engine.is_running, timeout_s=10)
