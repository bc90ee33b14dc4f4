"""The server a vLLM user drives in the OpenAI feature tests: the tiny LLaVA with auto tool
choice (Hermes parser) and the default media policy, the openai client, shared tools."""

from __future__ import annotations

import openai
import pytest
import requests
from server_fixtures import data_url, image_part, png_bytes, user

from mmcore import Engine
from mmcore.server import BackgroundServer, ServerConfig

MODEL = "tiny-tools"
IMAGE_TOKENS = 16  # tiny LLaVA: (32 / 8) ** 2 patches per image
UNIT_PARAMS = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": UNIT_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"utc": {"type": "boolean"}},
                "required": ["utc"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMS_BY_NAME = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = user(image_part(data_url(png_bytes(5))), "What is the weather?")


@pytest.fixture(scope="module")
def srv(tiny_llava_dir):
    """A server with auto tool choice (Hermes parser) and the default media policy."""
    config = ServerConfig(
        model_names=[MODEL],
        log_level="warning",
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
    )
    with BackgroundServer(lambda: Engine(tiny_llava_dir, seed=0), config) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=60, max_retries=0)


def post(srv, path: str, body: dict) -> requests.Response:
    return requests.post(srv.url + path, json=body, timeout=60)
