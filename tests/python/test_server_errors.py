# ruff: noqa: F811  (fixtures imported from server_fixtures are parameters here)
"""Every bad input gets an OpenAI error body with the right status, and the server keeps serving."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import requests
from server_fixtures import (  # noqa: F401  (pytest fixtures)
    MAX_IMAGES,
    MAX_REQUEST_BYTES,
    MODEL_NAME,
    data_url,
    image_part,
    media_dir,
    png_bytes,
    server,
    user,
)

GOOD_IMAGE = image_part(data_url(png_bytes(11)))


def _chat(server, body: dict | str | bytes, **kwargs) -> requests.Response:
    url = server.url + "/v1/chat/completions"
    if isinstance(body, dict):
        body = {"model": MODEL_NAME, "max_tokens": 4, "temperature": 0.0, **body}
        return requests.post(url, json=body, timeout=60, **kwargs)
    return requests.post(url, data=body, timeout=60, **kwargs)


def _assert_error(response: requests.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert fragment.lower() in error["message"].lower(), error["message"]


def _assert_still_serving(server) -> None:
    ok = _chat(server, {"messages": user(GOOD_IMAGE, "describe")})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


BAD_CHATS = {
    "corrupt_image": (
        {"messages": user(image_part(data_url(b"this is not a png")), "hi")},
        400,
        "image",
    ),
    "bad_data_url": (
        {"messages": user(image_part("data:image/png;base64,@@@not base64@@@"), "hi")},
        400,
        "data",
    ),
    "data_url_without_base64": (
        {"messages": user(image_part("data:image/png,"), "hi")},
        400,
        "data",
    ),
    "unsupported_part": (
        {"messages": user({"type": "input_file", "file": {"file_data": "AAAA"}}, "hi")},
        400,
        "unsupported content part",
    ),
    "too_many_images": (
        {"messages": user(*[GOOD_IMAGE] * (MAX_IMAGES + 1), "hi")},
        400,
        f"more than the {MAX_IMAGES} allowed",
    ),
    "user_typed_placeholder": ({"messages": user("look: <image> here")}, 400, "placeholder"),
    "prompt_too_long": ({"messages": user("dog " * 5000)}, 400, "longer than the maximum"),
    "negative_temperature": ({"messages": user("hi"), "temperature": -1}, 400, "temperature"),
    "top_p_above_one": ({"messages": user("hi"), "top_p": 1.5}, 400, "top_p"),
    "zero_max_tokens": ({"messages": user("hi"), "max_tokens": 0}, 400, "max_tokens"),
    "n_zero": ({"messages": user("hi"), "n": 0}, 400, "n"),
    "stop_not_string": ({"messages": user("hi"), "stop": [1, 2]}, 400, "stop"),
    "missing_messages": ({"messages": []}, 400, "messages"),
    "bad_role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    "unknown_model": ({"messages": user("hi"), "model": "no-such-model"}, 404, "does not exist"),
    "image_path_traversal": (
        {"messages": user(image_part("../secret.png"), "hi")},
        400,
        "outside the allowed",
    ),
    "symlink_out_of_folder": (
        {"messages": user(image_part("escape.png"), "hi")},
        400,
        "outside the allowed",
    ),
    "file_url_traversal": (
        {"messages": user(image_part("file:///etc/passwd"), "hi")},
        400,
        "outside the allowed",
    ),
    "host_not_allowed": (
        {"messages": user(image_part("http://example.com/cat.png"), "hi")},
        400,
        "not allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHATS))
def test_bad_chat_input_is_refused_and_server_keeps_serving(server, case):
    body, status, fragment = BAD_CHATS[case]
    _assert_error(_chat(server, body), status, fragment)
    _assert_still_serving(server)


def test_invalid_json_is_400(server):
    response = _chat(server, b"{not json", headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "json")
    _assert_still_serving(server)


def test_bad_completion_prompt_token_ids(server):
    response = requests.post(
        server.url + "/v1/completions",
        json={"model": MODEL_NAME, "prompt": [10**9], "max_tokens": 2},
        timeout=60,
    )
    _assert_error(response, 400, "prompt_token_ids")
    _assert_still_serving(server)


def test_placeholder_text_in_a_completion_prompt_creates_no_image_slot(server):
    response = requests.post(
        server.url + "/v1/completions",
        json={"model": MODEL_NAME, "prompt": "USER: <image> what is this?", "max_tokens": 2},
        timeout=60,
    )
    _assert_error(response, 400, "<image>")
    _assert_still_serving(server)


def test_prompt_filling_the_whole_context_is_refused_by_the_engine_thread(server):
    max_len = server.state.engine.engine.max_model_len
    response = requests.post(
        server.url + "/v1/completions",
        json={"model": MODEL_NAME, "prompt": [5] * max_len, "max_tokens": 2},
        timeout=60,
    )
    _assert_error(response, 400, "no room to generate")
    _assert_still_serving(server)


def test_body_over_the_limit_is_413(server):
    big = json.dumps({"model": MODEL_NAME, "messages": user("x" * (MAX_REQUEST_BYTES + 10))})
    _assert_error(_chat(server, big.encode()), 413, "exceeds the limit")

    def chunked():  # no Content-Length: the limit must hold on the streamed body too
        for i in range(0, len(big), 64 << 10):
            yield big[i : i + (64 << 10)].encode()

    _assert_error(_chat(server, chunked()), 413, "exceeds the limit")
    _assert_still_serving(server)


def test_local_file_inside_the_allowed_folder_is_served(server, media_dir):
    ok = _chat(server, {"messages": user(image_part("cat.png"), "hi")})
    assert ok.status_code == 200, ok.text
    by_url = _chat(server, {"messages": user(image_part(f"file://{media_dir}/cat.png"), "hi")})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["choices"][0]["message"] == ok.json()["choices"][0]["message"]


@pytest.fixture
def image_host():
    """A loopback HTTP server with one PNG (and one oversized file)."""
    files = {"/cat.png": png_bytes(7), "/huge.png": b"\0" * (2 << 20)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_image_from_an_allowed_host(server, media_dir, image_host):
    by_http = _chat(server, {"messages": user(image_part(f"{image_host}/cat.png"), "hi")})
    assert by_http.status_code == 200, by_http.text
    local = _chat(server, {"messages": user(image_part("cat.png"), "hi")})
    assert by_http.json()["choices"][0]["message"] == local.json()["choices"][0]["message"]
    too_big = _chat(server, {"messages": user(image_part(f"{image_host}/huge.png"), "hi")})
    assert too_big.status_code == 400, too_big.text
    missing = _chat(server, {"messages": user(image_part(f"{image_host}/nope.png"), "hi")})
    assert missing.status_code == 400, missing.text
    _assert_still_serving(server)


def test_unknown_route_is_an_openai_404(server):
    response = requests.get(server.url + "/v1/nothing", timeout=10)
    assert response.status_code == 404
    assert "error" in response.json()
