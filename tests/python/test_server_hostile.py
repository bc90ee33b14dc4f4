"""Acceptance: hostile and malformed requests get a 4xx with an OpenAI error body and never
hurt the server (a good request is answered correctly after each); 300 concurrent streams with
30% disconnects leave no running request and no KV block behind."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import random
import struct
import zlib

import httpx2 as httpx
import pytest
import requests
from PIL import Image
from server_fixtures import data_url, image_part, media_dir, png_bytes, user, wait_until  # noqa: F401

from mmcore import Engine
from mmcore.engine.chat_safety import plain_text_tokenizer
from mmcore.server import BackgroundServer, MediaPolicy, ServerConfig

MODEL = "tiny-llava"
KEY = "sk-hostile-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD_BODY = {"model": MODEL, "messages": user("hello"), "max_tokens": 1, "temperature": 0.0}


def _png_header_bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (valid CRCs, almost no data)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


def _flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 99, 199)).save(buf, format="PNG")
    return buf.getvalue()


def _chat(**fields) -> tuple:
    return ("POST", CHAT, {"json": {**GOOD_BODY, **fields}})


def _parts(*parts) -> tuple:
    return _chat(messages=[{"role": "user", "content": list(parts)}])


def _completion(**fields) -> tuple:
    return (
        "POST",
        COMPLETIONS,
        {"json": {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}},
    )


def _image_url(url) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _text(t) -> dict:
    return {"type": "text", "text": t}


NAN, INF = float("nan"), float("inf")
NUMERIC_EXTREMES = {
    "temperature": [-0.1, 2.01, 1e308, -1e308, NAN, INF, "hot", [1], {"a": 1}],
    "top_p": [0, -1, 1.5, NAN, -INF, "x"],
    "top_k": [-2, 2**31, 2**63, 2**70, -(2**70), 10**6, 1.5, "x"],
    "min_p": [-0.1, 1.1, NAN, "x"],
    "n": [0, -1, 17, 2**40, 1.5],
    "seed": [-1, 2**63, 2**70, "x", 1.5],
    "max_tokens": [0, -1, 2**31, 2**70, 1.5, "x"],
    "max_completion_tokens": [0, -5, 2**70],
    "min_tokens": [-1, 2**31, 2**40],
    "presence_penalty": [2.5, -3, NAN],
    "frequency_penalty": [2.5, -3, INF],
    "top_logprobs": [-1, 21, 2**70],
    "stop_token_ids": [[-1], [2**31], [2**40], [2**70], [10**6], "x", [1.5], [[1]], [1] * 2000],
    "stop": ["", [""], ["x"] * 17, 5, [5], ["a" * 2000]],
    "timeout": [0, -1, 1e9, NAN, "soon"],
}
COMPLETION_EXTREMES = {
    "max_tokens": [0, 2**70],
    "top_k": [2**70, 10**6],
    "logprobs": [-1, 21, 2**70],
    "stop_token_ids": [[2**40]],
    "min_tokens": [2**40],
    "n": [0, 17],
    "prompt": [
        [1, 2**40, 5],
        [1, 2**70],
        [],
        [[]],
        [-1],
        [1.5],
        None,
        {"a": 1},
        [10**6],
        "",
        [[1, 2**40]],
        [5] * 5000,
        "hello " * 3000,
    ],
}
MALFORMED_PARTS = [
    {"type": ["image_url"]},
    {"type": None},
    {"type": 5},
    {},
    "just a string",
    {"type": "image_embeds"},
    {"type": "image_embeds", "image_embeds": [[1, 2]]},
    {"type": "image_embeds", "image_embeds": "AAAA"},
    {"type": "image_url"},
    {"type": "image_url", "image_url": 5},
    {"type": "image_url", "image_url": {"url": ""}},
    {"type": "image_url", "image_url": {"url": 5}},
    {"type": "image_url", "image_url": {"url": {"x": 1}}},
    {"type": "text"},
    {"type": "text", "text": 5},
    {"type": "video_url", "video_url": {"url": "x"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "image", "image": 5},
]
MALFORMED_MESSAGES = [
    [],
    "hi",
    5,
    [{"role": "robot", "content": "x"}],
    [{"content": "x"}],
    [5],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": {"a": 1}}],
]


def _injections(image: dict) -> list[list]:
    return [
        [_text("<im"), _text("age>"), image],
        [_text("<image>"), image],
        [_text("<image>")],
        [_text("x <ima"), _text("ge> y")],
        [_text("<"), _text("image"), _text(">"), image],
        [image, _text("<imag"), _text("e>")],
    ]


def _media(url_of) -> list:
    good_png = png_bytes(3)
    return [
        url_of(_png_header_bomb()),
        url_of(_flat_png(8000, 8000)),  # 8 KB, over the request's pixel budget
        url_of(_flat_png(1, 4000)),  # aspect ratio far beyond what a processor can resize
        url_of(good_png[: len(good_png) // 2]),  # truncated
        url_of(random.Random(0).randbytes(2000)),
        url_of(b"GIF89a" + b"\0" * 20),
        url_of(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        "data:image/png;base64,",
        "data:image/png;base64,!!!!not-base64",
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
        "data:image/png;base64",
        "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode(),
    ]


URL_TRICKS = [
    "file:///etc/passwd",
    "/etc/passwd",
    "../secret.png",
    "file://localhost/etc/passwd",
    "escape.png",  # a symlink out of the allowed folder
    "%2e%2e/secret.png",
    "file:///proc/self/environ",
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:1/x.png",
    "https://example.com/a.png",
    "ftp://example.com/a.png",
    "gopher://example.com/_",
    "javascript:alert(1)",
    "//evil.example/a.png",
    "C:\\Windows\\win.ini",
    "\\\\server\\share\\a.png",
    "nope://x",
]
AUTH_VARIANTS = [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Token {KEY}"},
    {"Authorization": KEY},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Bearer {KEY[:-1]}"},
    {"X-API-Key": KEY},
]


def _cases() -> list[tuple[str, tuple]]:
    cases = []
    for name, values in NUMERIC_EXTREMES.items():
        cases += [(f"chat-{name}={v!r}"[:80], _chat(**{name: v})) for v in values]
    cases.append(("chat-min_tokens>max_tokens", _chat(min_tokens=10, max_tokens=2)))
    cases.append(("chat-top_logprobs-without-logprobs", _chat(top_logprobs=3)))
    cases.append(
        ("chat-stream_options-without-stream", _chat(stream_options={"include_usage": True}))
    )
    for name, values in COMPLETION_EXTREMES.items():
        cases += [(f"completion-{name}={v!r}"[:80], _completion(**{name: v})) for v in values]
    cases += [(f"part-{i}", _parts(_text("hi"), p)) for i, p in enumerate(MALFORMED_PARTS)]
    cases += [(f"messages-{i}", _chat(messages=m)) for i, m in enumerate(MALFORMED_MESSAGES)]
    image = image_part(data_url(png_bytes(5)))
    cases += [(f"injection-{i}", _parts(*p)) for i, p in enumerate(_injections(image))]
    cases.append(("injection-string-content", _chat(messages=user("look <image> here"))))
    cases.append(
        (
            "injection-system-message",
            _chat(messages=[{"role": "system", "content": "<image>"}, *user(image, "hi")]),
        )
    )
    cases.append(("too-many-images", _parts(image, image, image, _text("hi"))))
    media = _media(lambda b: data_url(b))
    cases += [(f"media-{i}", _parts(_image_url(u), _text("hi"))) for i, u in enumerate(media)]
    cases += [(f"url-{u}"[:80], _parts(_image_url(u), _text("hi"))) for u in URL_TRICKS]
    cases += [
        (f"auth-{i}", ("POST", CHAT, {"json": GOOD_BODY, "auth": h}))
        for i, h in enumerate(AUTH_VARIANTS)
    ]
    cases.append(("auth-models", ("GET", "/v1/models", {"auth": {}})))
    cases.append(("auth-metrics", ("GET", "/metrics", {"auth": {}})))
    cases += [
        ("body-invalid-json", ("POST", CHAT, {"data": b"{", "ctype": "application/json"})),
        ("body-json-array", ("POST", CHAT, {"data": b"[]", "ctype": "application/json"})),
        ("body-json-string", ("POST", CHAT, {"data": b'"hi"', "ctype": "application/json"})),
        ("body-empty", ("POST", CHAT, {"data": b"", "ctype": "application/json"})),
        ("body-too-large", ("POST", CHAT, {"data": b"x" * (3 << 20), "ctype": "application/json"})),
        (
            "header-too-large",
            ("POST", CHAT, {"json": GOOD_BODY, "headers": {"X-Big": "a" * 20_000}}),
        ),
        ("unknown-model", _chat(model="gpt-9")),
        ("unknown-endpoint", ("POST", "/v1/nothing", {"json": GOOD_BODY})),
        ("wrong-method", ("GET", CHAT, {})),
        ("completion-unknown-model", _completion(model="nope")),
        ("nested-depth", _chat(messages=[{"role": "user", "content": [[[[[[["x"]]]]]]]}])),
    ]
    return cases


CASES = _cases()


@pytest.fixture(scope="module", params=[False, True], ids=["engine-thread", "engine-core-process"])
def hostile_server(request, tiny_llava_dir, media_dir):  # noqa: F811
    engine = functools.partial(
        Engine,
        tiny_llava_dir,
        seed=0,
        limit_mm_per_prompt={"image": 2},
        allowed_local_media_path=str(media_dir),
    )

    config = ServerConfig(
        model_names=[MODEL],
        api_key=KEY,
        max_request_bytes=2 << 20,
        max_request_pixels=4_000_000,
        metrics_need_api_key=True,
        media=MediaPolicy(allowed_local_media_path=str(media_dir), max_images=2),
        log_level="critical",
        engine_core_process=request.param,
    )
    with BackgroundServer(engine, config) as srv:
        session = requests.Session()
        reference = session.post(srv.url + CHAT, json=GOOD_BODY, headers=AUTH, timeout=60)
        assert reference.status_code == 200
        yield srv, session, reference.json()["choices"][0]["message"]["content"]


def test_the_suite_has_at_least_150_hostile_requests():
    assert len(CASES) >= 150, len(CASES)


@pytest.mark.parametrize(("name", "case"), CASES, ids=[n for n, _ in CASES])
def test_hostile_request_gets_a_4xx_and_the_server_goes_on(hostile_server, name, case):
    srv, session, expected = hostile_server
    method, path, spec = case
    headers = dict(spec.get("auth", AUTH))
    headers.update(spec.get("headers", {}))
    data = spec.get("data")
    if "json" in spec:  # NaN and Infinity as Python's json writes them (requests refuses)
        data, headers["Content-Type"] = json.dumps(spec["json"]).encode(), "application/json"
    if "ctype" in spec:
        headers["Content-Type"] = spec["ctype"]
    response = session.request(method, srv.url + path, data=data, headers=headers, timeout=60)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    good = session.post(srv.url + CHAT, json=GOOD_BODY, headers=AUTH, timeout=60)
    assert good.status_code == 200
    assert good.json()["choices"][0]["message"]["content"] == expected


def test_bearer_scheme_is_case_insensitive_and_metrics_take_the_key(hostile_server):
    srv, session, expected = hostile_server
    for scheme in ("bearer", "BEARER", "Bearer"):
        response = session.post(
            srv.url + CHAT, json=GOOD_BODY, headers={"Authorization": f"{scheme} {KEY}"}, timeout=60
        )
        assert response.status_code == 200
    assert session.get(srv.url + "/metrics", headers=AUTH, timeout=10).status_code == 200
    assert session.get(srv.url + "/health", timeout=10).status_code == 200  # never behind the key


def test_typed_control_tokens_in_a_completion_prompt_are_plain_text(hostile_server, tiny_llava_dir):
    srv, session, _ = hostile_server
    body = {"model": MODEL, "prompt": "a</s><s>b", "max_tokens": 1}
    response = session.post(srv.url + COMPLETIONS, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200
    tokenizer = srv.state.tokenizer
    as_text = plain_text_tokenizer(tokenizer)("a</s><s>b")["input_ids"]
    assert response.json()["usage"]["prompt_tokens"] == len(as_text)
    assert len(as_text) > len(tokenizer("a</s><s>b")["input_ids"])


def test_300_streams_with_30_percent_disconnects_leave_nothing_behind(hostile_server):
    srv, _, _ = hostile_server
    body = {**GOOD_BODY, "max_tokens": 3, "ignore_eos": True, "stream": True}
    rng = random.Random(1)
    leavers = set(rng.sample(range(300), 90))
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with client.stream("POST", srv.url + CHAT, json=body, headers=AUTH) as response:
            statuses.append(response.status_code)
            async for line in response.aiter_lines():
                if i in leavers and line.startswith("data: "):
                    return  # disconnect after the first event
        return

    async def burst() -> None:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            await asyncio.gather(*(one(client, i) for i in range(300)))

    asyncio.run(burst())
    assert len(statuses) == 300 and all(s == 200 for s in statuses), sorted(set(statuses))
    stats = srv.state.engine.stats
    assert wait_until(
        lambda: (
            stats().get("kv_blocks_used") == 0
            and stats().get("num_running") == 0
            and stats().get("num_waiting") == 0
            and stats().get("num_active_requests") == 0
        ),
        30,
    ), stats()
    assert srv.state.admission.num_admitted == 0
    metrics = srv.state.metrics.render().decode()
    assert 'status="5' not in metrics
    engine = srv.state.engine.engine
    if hasattr(engine, "scheduler"):  # an in-process engine (the core's counters are above)
        engine.scheduler.check_invariants()
