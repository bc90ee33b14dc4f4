"""An engine failure is reported (503, error event, unhealthy), never a hang."""

from __future__ import annotations

import json

import requests
from server_fixtures import MODEL_NAME, user

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
        assert requests.get(srv.url + "/health", timeout=10).status_code == 503
        after = requests.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
        assert after.status_code == 503
        assert after.json()["error"]["code"] == "engine_unavailable"
