"""An engine failure is reported (503, error event, unhealthy), never a hang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from server_fixtures import MODEL_NAME, user, wait_until

from mmcore import Engine
from mmcore.server import BackgroundServer, ServerConfig


def test_engine_failure_fails_requests_and_health(tiny_llava_dir):
    engine = Engine(tiny_llava_dir)
    real_step = engine.step
    calls = {"n": 0}

    def failing_step():
        calls["n"] += 1
        if calls["n"] > 2:  # fail mid-generation
            raise RuntimeError("device lost")
        return real_step()

    engine.step = failing_step
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical")
    with BackgroundServer(engine, config) as srv:
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 20, "ignore_eos": True}
        with requests.post(
            srv.url + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=30
        ) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith(b"data: ")]
        error = json.loads(events[-2][len("data: ") :])["error"]
        assert "device lost" in error["message"] and error["code"] == "engine_unavailable"
        assert events[-1] == b"data: [DONE]"
        assert not srv.state.engine.is_running
        # The server then shuts down (a supervisor restarts it): unhealthy, then gone.
        assert wait_until(lambda: not srv._thread.is_alive(), 20)


def test_an_engine_factory_runs_on_the_engine_thread(tiny_llava_dir):
    built_on = []

    def factory():
        built_on.append(threading.current_thread().name)
        return Engine(tiny_llava_dir)

    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical")
    with BackgroundServer(factory, config) as srv:
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 3}
        assert requests.post(srv.url + "/v1/chat/completions", json=body, timeout=30).ok
        models = requests.get(srv.url + "/v1/models", timeout=10).json()["data"]
        assert models[0]["max_model_len"] == srv.state.engine.engine.max_model_len
    assert built_on == ["mm-engine"]


def test_an_engine_that_fails_to_build_stops_the_server_with_its_error():
    def factory():
        raise ValueError("no model at /nowhere")

    srv = BackgroundServer(factory, ServerConfig(model_names=[MODEL_NAME], log_level="critical"))
    with pytest.raises(RuntimeError, match="did not start"):
        srv.start()
    assert isinstance(srv.state.engine.start_error, ValueError)
    assert "no model at /nowhere" in str(srv.state.engine.start_error)
    assert not srv.state.engine.is_running


def test_serve_exits_nonzero_naming_the_build_error(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mmcore.cli", "serve", str(tmp_path), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert str(tmp_path) in proc.stdout + proc.stderr


def test_a_failed_worker_answers_503_and_stops_the_server_with_its_error(tiny_llava_dir):
    """A dead tensor-parallel worker: the request in flight gets 503, then the server stops
    and ``run_server`` raises (``mmcore serve`` exits non-zero for its supervisor)."""
    from mmcore.executor.errors import WorkerFailedError
    from mmcore.server.api_server import run_server

    engine = Engine(tiny_llava_dir)

    def failing_step():
        raise WorkerFailedError("tensor-parallel worker rank 1 (pid 1) died", rank=1)

    engine.step = failing_step
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", port=port)
    statuses = []

    def client():
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                requests.get(url + "/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 3}
        statuses.append(requests.post(url + "/v1/chat/completions", json=body, timeout=30))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    with pytest.raises(WorkerFailedError, match="rank 1"):
        run_server(engine, config)
    thread.join(30)
    assert statuses[0].status_code == 503
    assert "rank 1" in statuses[0].json()["error"]["message"]
