"""The engine in its own process (``--engine-core-process``): the faults of the in-process
engine thread behave as before (a bad request gets 400, a failing request fails alone, a dead
engine answers 503 and stops the server), the core process dies with the server, and the
server process loads no model."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from engine_core_faults import POISON_SEED, engine_with_poisoned_sampler, slow_engine
from server_fixtures import MODEL_NAME, free_port, user, wait_until

from mmcore import SamplingParams
from mmcore.server import BackgroundServer, ServerConfig

BODY = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 4}


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _spawned_children(pid: int) -> list[int]:
    """The processes ``pid`` started with multiprocessing's spawn (not its resource tracker)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    spawned = []
    for child in found:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                spawned.append(child)
    return spawned


@pytest.fixture(scope="module")
def server(tiny_llava_dir):
    """A server whose engine core samples with a poisoned sampler (one per module)."""
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", engine_core_process=True)
    factory = functools.partial(engine_with_poisoned_sampler, tiny_llava_dir)
    with BackgroundServer(factory, config) as srv:
        yield srv


def test_the_engine_runs_in_another_process_and_answers_as_in_process(server, tiny_llava_dir):
    from mmcore import Engine

    engine = server.state.engine
    assert engine.core_pid != os.getpid() and _alive(engine.core_pid)
    assert getattr(engine.engine, "model", None) is None  # no weights in the server process
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = Engine(tiny_llava_dir, seed=0).chat(BODY["messages"], params, use_tqdm=False)
    body = {**BODY, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
    got = requests.post(server.url + "/v1/chat/completions", json=body, timeout=30).json()
    assert got["choices"][0]["message"]["content"] == expected[0].outputs[0].text
    assert got["usage"]["prompt_tokens"] == len(expected[0].prompt_token_ids)


def test_a_request_the_core_refuses_gets_400_and_the_others_go_on(server):
    max_len = server.state.engine.engine.max_model_len
    url = server.url + "/v1/completions"
    full = {"model": MODEL_NAME, "prompt": [5] * max_len, "max_tokens": 2}
    refused = requests.post(url, json=full, timeout=30)
    assert refused.status_code == 400
    assert "no room to generate" in refused.json()["error"]["message"]
    good = requests.post(url, json={**full, "prompt": [5, 6, 7]}, timeout=30)
    assert good.status_code == 200 and good.json()["choices"][0]["text"]


def test_a_failing_request_fails_alone_and_kv_blocks_come_back(server):
    url = server.url + "/v1/chat/completions"
    bad = requests.post(url, json={**BODY, "seed": POISON_SEED}, timeout=30)
    assert bad.status_code == 500 and bad.json()["error"]["code"] == "request_failed"
    assert "injected sampler fault" in bad.json()["error"]["message"]
    with requests.post(
        url, json={**BODY, "seed": POISON_SEED, "stream": True}, stream=True, timeout=30
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith(b"data: ")]
    assert json.loads(events[-2][len("data: ") :])["error"]["code"] == "request_failed"
    assert events[-1] == b"data: [DONE]"
    good = requests.post(url, json=BODY, timeout=30)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    stats = server.state.engine.stats()  # the core's counters, sent with each step
    assert stats["kv_blocks_used"] == 0 and stats["num_active_requests"] == 0
    assert stats["num_steps"] > 0


def test_structured_outputs_compile_off_the_step_loop_and_constrain(server):
    url = server.url + "/v1/chat/completions"
    choice = {**BODY, "max_tokens": 8, "structured_outputs": {"choice": ["red", "green"]}}
    regex = {**BODY, "max_tokens": 6, "structured_outputs": {"regex": "[0-9]{3}"}}
    for body, check in ((choice, lambda t: t in ("red", "green")), (regex, str.isdigit)):
        response = requests.post(url, json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert check(response.json()["choices"][0]["message"]["content"])
    bad = requests.post(url, json={**BODY, "structured_outputs": {"regex": "("}}, timeout=30)
    assert bad.status_code == 400 and "regex" in bad.json()["error"]["message"]
    assert server.state.engine.stats()["num_active_requests"] == 0


def test_a_killed_core_fails_the_running_request_with_503_and_stops_the_server(tiny_llava_dir):
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", engine_core_process=True)
    srv = BackgroundServer(functools.partial(slow_engine, tiny_llava_dir), config).start()
    try:
        core_pid = srv.state.engine.core_pid
        body = {**BODY, "max_tokens": 400, "ignore_eos": True, "stream": True}
        with requests.post(
            srv.url + "/v1/chat/completions", json=body, stream=True, timeout=30
        ) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith(b"data: "))
            assert b"chat.completion.chunk" in first
            os.kill(core_pid, signal.SIGKILL)
            killed = time.monotonic()
            events = [line for line in lines if line.startswith(b"data: ")]
        assert time.monotonic() - killed < 10
        error = json.loads(events[-2][len("data: ") :])["error"]
        assert error["code"] == "engine_unavailable" and "died" in error["message"]
        assert not srv.state.engine.is_running
        # As with a failed engine thread, the server then shuts down for its supervisor.
        assert wait_until(lambda: not srv._thread.is_alive(), 20)
    finally:
        srv.stop()


def _serve(model_dir: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "mmcore.cli", "serve", model_dir, "--port", str(port)]
    command += ["--engine-core-process", "--log-level", "warning", "--media-processes", "0"]
    return subprocess.Popen(
        command,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C reaches the server and its core
    )


@pytest.mark.parametrize("kill", ["core", "server", "ctrl-c"])
def test_mmcore_serve_and_its_core_process_end_together(tiny_llava_dir, kill):
    """A dead core stops ``mmcore serve`` with a non-zero status; a killed server leaves no core
    process behind; Ctrl-C (SIGINT to every process of the group) stops both gracefully."""
    port = free_port()
    proc = _serve(tiny_llava_dir, port)
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
            except requests.ConnectionError:
                return False

        assert wait_until(lambda: healthy() or proc.poll() is not None, 120) and healthy()
        [core_pid] = _spawned_children(proc.pid)
        if kill == "core":
            os.kill(core_pid, signal.SIGKILL)
            assert proc.wait(30) != 0
            assert "engine core process died" in proc.stdout.read()
        elif kill == "server":
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            assert wait_until(lambda: not _alive(core_pid), 10)
        else:  # SIGINT to the process group, as a terminal's Ctrl-C: a graceful stop
            os.killpg(proc.pid, signal.SIGINT)
            # uvicorn re-raises SIGINT after its graceful shutdown, as after any Ctrl-C.
            assert proc.wait(30) in (0, -signal.SIGINT)
            log = proc.stdout.read()
            assert "engine failed" not in log and "died" not in log  # the core did not go first
            assert not _alive(core_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("flags", "device", "expected"),
    [
        ([], "cpu", False),
        ([], "cuda", True),
        (["--engine-core-process"], "cpu", True),
        (["--no-engine-core-process"], "cuda", False),
    ],
)
def test_the_engine_core_process_is_the_default_on_cuda_only(flags, device, expected):
    from mmcore.cli import build_parser
    from mmcore.commands import engine_core_process
    from mmcore.server_args import ServerArgs

    args = build_parser().parse_args(["serve", "some-model", "--device", device, *flags])
    assert engine_core_process(args, ServerArgs.from_cli_args(args)) is expected


def test_placeholder_features_cross_the_process_boundary():
    import numpy as np

    from mmcore import _core
    from mmcore.server.engine_core import dumps, loads

    mask = np.array([1, 1, 0, 1, 1, 1, 1, 0, 0, 1], dtype=bool)
    for feature in (
        _core.MMFeature(_core.Modality.IMAGE, "img-1", 3, 10, 7, mask),
        _core.MMFeature(_core.Modality.AUDIO, "aud-2", 20, 5, 5),
    ):
        copy = loads(dumps(feature))
        for name in ("modality", "identifier", "offset", "length", "num_embeds"):
            assert getattr(copy, name) == getattr(feature, name)
        assert list(copy.embed_mask) == list(feature.embed_mask)


def test_an_engine_builder_that_cannot_cross_to_the_core_is_named(tiny_llava_dir):
    from mmcore import Engine

    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", engine_core_process=True)
    srv = BackgroundServer(lambda: Engine(tiny_llava_dir), config)
    with pytest.raises(RuntimeError, match="did not start"):
        srv.start()
    assert isinstance(srv.state.engine.start_error, TypeError)
    assert "picklable function" in str(srv.state.engine.start_error)
    assert not srv.state.engine.is_running


def test_an_engine_that_fails_to_build_in_the_core_stops_the_server_with_its_error(tmp_path):
    from mmcore import Engine

    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", engine_core_process=True)
    srv = BackgroundServer(functools.partial(Engine, str(tmp_path)), config)
    with pytest.raises(RuntimeError, match="did not start"):
        srv.start()
    error = srv.state.engine.start_error
    assert isinstance(error, (ValueError, OSError)) and str(tmp_path) in str(error)
    assert not _alive(srv.state.engine.core_pid)
