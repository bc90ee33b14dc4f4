"""Overload and faults: a bounded waiting room (429 + Retry-After), per-request timeouts, an
engine that fails for good takes the server down, and a port in use is a one-line error."""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
import time

import requests
from server_fixtures import MODEL_NAME, user, wait_until

from mmcore import Engine
from mmcore.server import BackgroundServer, ServerConfig


def _slow_engine(tiny_llava_dir, delay_s: float, **kwargs):
    def build():
        engine = Engine(tiny_llava_dir, seed=0, **kwargs)
        real_step = engine.step

        def step():
            time.sleep(delay_s)
            return real_step()

        engine.step = step
        return engine

    return build


def test_a_full_waiting_room_answers_429_with_retry_after(tiny_llava_dir):
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical", max_waiting_requests=1)
    build = _slow_engine(tiny_llava_dir, 0.02, max_num_seqs=2)
    with BackgroundServer(build, config) as srv:
        url = srv.url + "/v1/chat/completions"
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 8, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda _: requests.post(url, json=body, timeout=60), range(8))
            )
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 429} and codes.count(200) >= 3
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "server_overloaded"
        assert wait_until(lambda: srv.state.admission.num_admitted == 0, 10)
        assert requests.post(url, json=body, timeout=60).status_code == 200


def test_timeout_aborts_the_request_and_frees_its_blocks(tiny_llava_dir):
    config = ServerConfig(model_names=[MODEL_NAME], log_level="critical")
    with BackgroundServer(_slow_engine(tiny_llava_dir, 0.02), config) as srv:
        url = srv.url + "/v1/chat/completions"
        body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 400, "ignore_eos": True}
        start = time.monotonic()
        response = requests.post(url, json={**body, "timeout": 0.5}, timeout=60)
        assert response.status_code == 200
        assert response.json()["choices"][0]["finish_reason"] == "abort"
        assert time.monotonic() - start < 5
        stats = srv.state.engine.stats
        assert wait_until(lambda: stats().get("kv_blocks_used") == 0, 10)
        bad = requests.post(url, json={**body, "timeout": -1}, timeout=60)
        assert bad.status_code == 400 and "timeout" in bad.json()["error"]["message"]


def test_an_engine_that_fails_for_good_stops_the_server(tiny_llava_dir):
    def build():
        engine = Engine(tiny_llava_dir, seed=0)

        def broken_step():
            raise RuntimeError("device lost")

        engine.step = broken_step
        return engine

    srv = BackgroundServer(build, ServerConfig(model_names=[MODEL_NAME], log_level="critical"))
    srv.start()
    body = {"model": MODEL_NAME, "messages": user("hi"), "max_tokens": 4}
    response = requests.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 503
    assert wait_until(lambda: not srv._thread.is_alive(), 20)
    assert srv.state.engine.error is not None


def test_port_in_use_is_a_one_line_error_before_the_model_loads(tiny_llava_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "mmcore.cli", "serve", tiny_llava_dir, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert "in use" in lines[-1] and str(port) in lines[-1]
    assert "engine ready" not in proc.stderr  # refused before the model was loaded
    assert time.monotonic() - start < 10  # ~1 s here: no torch import before the bind
