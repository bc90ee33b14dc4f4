"""Server pieces that need no model: request validation, stream deltas, SSE, errors, metrics,
media URL policy, benchmark statistics and workload."""

from __future__ import annotations

import base64
import io
import math
import os

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from mmcore.bench.serve_client import arrival_offsets
from mmcore.bench.stats import RequestResult, summarize
from mmcore.bench.workload import parse_image_size, random_mm_requests
from mmcore.engine_args import parse_limit_mm
from mmcore.outputs import CompletionOutput, Logprob, RequestOutput
from mmcore.server.errors import error_body
from mmcore.server.media_fetch import MediaPolicy, resolve_messages, resolve_url
from mmcore.server.metrics import RequestRecorder, ServerMetrics
from mmcore.server.protocol import ChatCompletionRequest, CompletionRequest
from mmcore.server.responses import SSE_DONE, chat_logprobs, sse_event
from mmcore.server.stream_updates import _Active, _deltas

USER = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- protocol
@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs requires logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"stop": ["", "x"]}, "stop strings must be non-empty"),
        ({"stream_options": {"include_usage": True}}, "stream_options is only allowed"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ],
)
def test_chat_request_rejects_bad_values(fields, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ChatCompletionRequest(**{"messages": USER, **fields})


def test_chat_request_maps_to_sampling_params():
    req = ChatCompletionRequest(
        messages=USER,
        temperature=0,
        top_p=0.5,
        max_tokens=99,
        max_completion_tokens=7,
        seed=3,
        stop="END",
        n=2,
        logprobs=True,
        top_logprobs=4,
    )
    p = req.to_sampling_params()
    assert (p.temperature, p.top_p, p.max_tokens, p.seed, p.n, p.logprobs) == (0, 0.5, 7, 3, 2, 4)
    assert p.stop_strings == ["END"]
    defaults = ChatCompletionRequest(messages=USER).to_sampling_params()
    assert (defaults.temperature, defaults.max_tokens, defaults.logprobs) == (1.0, None, None)


def test_completion_prompt_forms():
    assert CompletionRequest(prompt="a").prompt_list() == ["a"]
    assert CompletionRequest(prompt=[1, 2]).prompt_list() == [{"prompt_token_ids": [1, 2]}]
    assert CompletionRequest(prompt=["a", "b"]).prompt_list() == ["a", "b"]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompt_list() == [
        {"prompt_token_ids": [1]},
        {"prompt_token_ids": [2, 3]},
    ]
    assert CompletionRequest(prompt="a").to_sampling_params().max_tokens == 16
    with pytest.raises(ValidationError, match="unsupported field 'suffix'"):
        CompletionRequest(prompt="a", suffix="b")
    with pytest.raises(ValidationError, match="prompt must not be empty"):
        CompletionRequest(prompt=[])


# ----------------------------------------------------------------------------- stream deltas
def _output(texts, tokens, finish=None):
    outs = [
        CompletionOutput(index=i, text=t, token_ids=list(k), finish_reason=f)
        for i, (t, k, f) in enumerate(zip(texts, tokens, finish or [None] * len(texts)))
    ]
    return RequestOutput("r", None, [1], None, outs, finished=all(o.finished() for o in outs))


def test_deltas_hold_back_possible_stop_prefix_and_release_on_finish():
    active = _Active(None, None, hold_back=2, sent_chars=[0], sent_tokens=[0], done=[False])
    first = _deltas(active, _output(["hello"], [[1, 2]]))
    assert [d.text for d in first] == ["hel"]  # "lo" could start the 3-char stop string
    assert first[0].token_ids == [1, 2]
    second = _deltas(active, _output(["hello wo"], [[1, 2, 3]]))
    assert [d.text for d in second] == ["lo "]
    assert second[0].token_ids == [3]
    # The engine cut the stop string off: what was held back and not part of it is released.
    last = _deltas(active, _output(["hello wor"], [[1, 2, 3, 4]], ["stop"]))
    assert [(d.text, d.finish_reason) for d in last] == [("wor", "stop")]
    assert _deltas(active, _output(["hello wor"], [[1, 2, 3, 4]], ["stop"])) == []


def test_deltas_track_each_of_n_completions():
    active = _Active(None, None, 0, [0, 0], [0, 0], [False, False])
    d = _deltas(active, _output(["a", "x"], [[1], [9]]))
    assert [(x.index, x.text) for x in d] == [(0, "a"), (1, "x")]
    d = _deltas(active, _output(["ab", "x"], [[1, 2], [9]], [None, "length"]))
    assert [(x.index, x.text, x.finish_reason) for x in d] == [(0, "b", None), (1, "", "length")]
    d = _deltas(active, _output(["abc", "x"], [[1, 2, 3], [9]], ["length", "length"]))
    assert [(x.index, x.text) for x in d] == [(0, "c")]


# ----------------------------------------------------------------------------- SSE and errors
def test_sse_and_error_shapes():
    assert sse_event({"a": 1}) == 'data: {"a":1}\n\n'
    assert SSE_DONE == "data: [DONE]\n\n"
    body = error_body(400, "bad image", "invalid_image")
    assert body["error"]["message"] == "bad image"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_image"
    assert error_body(500, "x")["error"]["type"] == "server_error"


class _CharTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i) for i in ids)


def test_chat_logprobs_orders_top_and_reports_the_sampled_token():
    top = {0: Logprob(-0.1, 1), 1: Logprob(-2.0, 2), 2: Logprob(-3.0, 3)}
    lp = chat_logprobs(_CharTokenizer(), [2], [top], top_k=2)
    entry = lp["content"][0]
    assert entry["token"] == "c" and entry["logprob"] == -3.0
    assert [t["token"] for t in entry["top_logprobs"]] == ["a", "b"]
    assert entry["bytes"] == [ord("c")]


# ----------------------------------------------------------------------------- metrics
def test_metrics_record_tokens_latencies_and_engine_gauges():
    stats = {"kv_blocks_used": 3, "num_blocks": 12, "prefix_hits": 1, "prefix_queries": 4}
    metrics = ServerMetrics(lambda: stats)
    rec = RequestRecorder(metrics, arrival_time=10.0, num_prompt_tokens=5)
    rec.on_tokens(0, 1, now=10.5)
    rec.on_tokens(0, 2, now=10.9)
    rec.finish(["length"], now=11.0)
    rec.finish(["length"], now=12.0)  # counted once
    text = metrics.render().decode()
    assert "mmcore_prompt_tokens_total 5.0" in text
    assert "mmcore_generation_tokens_total 3.0" in text
    assert 'mmcore_requests_finished_total{finish_reason="length"} 1.0' in text
    assert "mmcore_time_to_first_token_seconds_count 1.0" in text
    assert "mmcore_time_to_first_token_seconds_sum 0.5" in text
    assert "mmcore_inter_token_latency_seconds_count 2.0" in text
    assert "mmcore_kv_cache_blocks_used 3.0" in text
    assert "mmcore_kv_cache_usage_ratio 0.25" in text
    assert "mmcore_prefix_cache_hit_rate 0.25" in text
    assert "mmcore_encoder_cache_hit_rate 0.0" in text


# ----------------------------------------------------------------------------- media policy
def test_media_urls_follow_the_policy(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "ok.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", allowed / "link.png")
    policy = MediaPolicy(allowed_domains=["images.example"], allowed_local_media_path=str(allowed))
    assert resolve_url("data:image/png;base64,AAAA", policy) == "data:image/png;base64,AAAA"
    assert resolve_url(str(allowed / "ok.png"), policy) == str((allowed / "ok.png").resolve())
    assert resolve_url(f"file://{allowed}/ok.png", policy).endswith("ok.png")
    for bad in (
        str(allowed / ".." / "secret.png"),
        str(allowed / "link.png"),
        "../secret.png",
        "/etc/passwd",
    ):
        with pytest.raises(ValueError, match="outside the allowed local media folder"):
            resolve_url(bad, policy)
    with pytest.raises(ValueError, match="not allowed"):
        resolve_url("http://evil.example/x.png", policy)
    with pytest.raises(ValueError, match="scheme 'ftp' is not supported"):
        resolve_url("ftp://images.example/x.png", policy)
    with pytest.raises(ValueError, match="local image files are not allowed"):
        resolve_url(str(allowed / "ok.png"), MediaPolicy())


def test_resolve_messages_counts_images_and_rewrites_parts():
    url = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [url, url, {"type": "text", "text": "hi"}]}]
    resolved = resolve_messages(messages, MediaPolicy(max_images=2))
    assert resolved[0]["content"][0] == {"type": "image", "image": "data:image/png;base64,AAAA"}
    assert resolved[0]["content"][2] == {"type": "text", "text": "hi"}
    assert messages[0]["content"][0] is url  # the input is not modified
    with pytest.raises(ValueError, match="3 images, more than the 2 allowed"):
        resolve_messages([{"role": "user", "content": [url, url, url]}], MediaPolicy(max_images=2))


# ----------------------------------------------------------------------------- bench
def test_summary_statistics():
    results = [
        RequestResult(
            ok=True, output_tokens=11, prompt_tokens=4, ttft_s=0.1 * i, latency_s=1.0 + 0.1 * i
        )
        for i in range(1, 11)
    ] + [RequestResult(ok=False, error="boom")]
    s = summarize(results, duration_s=2.0)
    assert (s.num_requests, s.num_errors, s.errors) == (11, 1, ["boom"])
    assert s.request_throughput == pytest.approx(5.0)
    assert s.output_throughput == pytest.approx(55.0)
    assert s.ttft["mean"] == pytest.approx(0.55)
    assert s.ttft["p50"] == pytest.approx(0.55)
    assert s.ttft["p99"] == pytest.approx(np.percentile([0.1 * i for i in range(1, 11)], 99))
    assert s.tpot["mean"] == pytest.approx(0.1)  # (latency - ttft) / 10 tokens = 1.0 / 10
    assert "1 errors" in s.format()
    with pytest.raises(ValueError):
        summarize(results, 0.0)


def test_poisson_arrivals_have_the_requested_rate():
    offsets = arrival_offsets(4000, request_rate=20.0, seed=1)
    assert offsets[0] == 0.0 and all(b >= a for a, b in zip(offsets, offsets[1:]))
    assert offsets[-1] / len(offsets) == pytest.approx(1 / 20.0, rel=0.1)
    assert arrival_offsets(5, math.inf) == [0.0] * 5
    with pytest.raises(ValueError):
        arrival_offsets(5, 0.0)


def test_random_workload_images_and_text():
    reqs = random_mm_requests(
        3, input_len=7, output_len=5, images_per_request=2, image_size=(40, 24), seed=0
    )
    assert len(reqs) == 3 and all(len(r.image_urls) == 2 and r.output_len == 5 for r in reqs)
    assert len(reqs[0].text.split()) == 7
    header, data = reqs[0].image_urls[0].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (40, 24)
    assert len({u for r in reqs for u in r.image_urls}) == 6  # every image differs
    parts = reqs[0].messages()[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    again = random_mm_requests(
        3, input_len=7, output_len=5, images_per_request=2, image_size=(40, 24), seed=0
    )
    assert [r.text for r in again] == [r.text for r in reqs]
    assert parse_image_size("336x224") == (336, 224)
    with pytest.raises(ValueError):
        parse_image_size("big")


def test_parse_limit_mm():
    assert parse_limit_mm("image=4,video=1") == {"image": 4, "video": 1}
    with pytest.raises(Exception, match="limit_mm_per_prompt"):
        parse_limit_mm("image")
