"""Prometheus metrics of the server: requests, tokens, latencies, KV cache and cache hit rates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mmcore.server.vllm_metrics import VllmMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
)
_ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1,
    2.5,
    5,
)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)


def _ratio(hits: float, queries: float) -> float:
    return hits / queries if queries else 0.0


class _EngineStatsCollector(Collector):
    """Gauges read from the engine's latest stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=float(value))

        used, total = s.get("kv_blocks_used", 0), s.get("num_blocks", 0)
        yield gauge("mmcore_kv_cache_blocks_used", "KV cache blocks held by requests", used)
        yield gauge("mmcore_kv_cache_blocks_total", "KV cache blocks in the pool", total)
        yield gauge(
            "mmcore_kv_cache_usage_ratio", "fraction of KV blocks in use", _ratio(used, total)
        )
        yield gauge(
            "mmcore_prefix_cache_hit_rate",
            "prefix cache hits / queries (tokens or blocks, as the core counts them)",
            _ratio(s.get("prefix_hits", 0), s.get("prefix_queries", 0)),
        )
        yield gauge(
            "mmcore_encoder_cache_hit_rate",
            "encoder cache hits / queries (multimodal items)",
            _ratio(s.get("encoder_hits", 0), s.get("encoder_queries", 0)),
        )
        yield gauge(
            "mmcore_num_requests_running",
            "requests the scheduler is running",
            s.get("num_running", s.get("num_active_requests", 0)),
        )
        yield gauge(
            "mmcore_num_requests_waiting",
            "requests waiting for the scheduler",
            s.get("num_waiting", 0),
        )
        yield gauge(
            "mmcore_num_requests_processing_inputs",
            "requests whose media and prompt are being processed",
            s.get("num_pending_inputs", 0),
        )


class ServerMetrics:
    """The server's metrics, in a registry of their own (several servers may share a process).

    Args:
        engine_stats: returns the engine's latest stats dict (``AsyncEngine.stats``).
        model_name: the served model name, the ``model_name`` label of the ``vllm:*`` metrics.
    """

    def __init__(
        self, engine_stats: Callable[[], dict[str, Any]], model_name: str = "default"
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "mmcore_http_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.requests_finished = Counter(
            "mmcore_requests_finished",
            "generation requests by finish reason (stop, length, abort, error)",
            ["finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "mmcore_prompt_tokens", "prompt tokens after placeholder expansion", registry=r
        )
        self.generation_tokens = Counter("mmcore_generation_tokens", "generated tokens", registry=r)
        self.ttft = Histogram(
            "mmcore_time_to_first_token_seconds",
            "time from request arrival to its first token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "mmcore_inter_token_latency_seconds",
            "time between consecutive output tokens of a completion",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "mmcore_e2e_request_latency_seconds",
            "time from request arrival to its last token",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        r.register(_EngineStatsCollector(engine_stats))
        self.vllm = VllmMetrics(
            r, engine_stats, model_name, _TTFT_BUCKETS, _ITL_BUCKETS, _E2E_BUCKETS
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestRecorder:
    """Feeds one request's timings and token counts into :class:`ServerMetrics`.

    Args:
        metrics: the server's metrics.
        arrival_time: ``time.monotonic()`` when the HTTP request arrived.
        num_prompt_tokens: prompt length after placeholder expansion.
    """

    def __init__(self, metrics: ServerMetrics, arrival_time: float, num_prompt_tokens: int) -> None:
        self._m = metrics
        self._arrival = arrival_time
        self._last_token_time: dict[int, float] = {}
        self._first_token_time: float | None = None
        self._finished = False
        self.num_prompt_tokens = num_prompt_tokens
        self.num_generated = 0

    def on_tokens(self, index: int, num_tokens: int, now: float) -> None:
        """Completion ``index`` got ``num_tokens`` new tokens at ``now``."""
        if num_tokens <= 0:
            return
        last = self._last_token_time.get(index)
        if last is None:
            if not self._last_token_time:
                self._m.ttft.observe(now - self._arrival)
                self._m.vllm.ttft.observe(now - self._arrival)
                self._first_token_time = now
            num_gaps = num_tokens - 1
            gap = 0.0
        else:
            num_gaps = num_tokens
            gap = (now - last) / num_tokens
        for _ in range(num_gaps):
            self._m.itl.observe(gap)
            self._m.vllm.itl.observe(gap)
        self._last_token_time[index] = now
        self.num_generated += num_tokens

    def finish(self, finish_reasons: list[str], now: float) -> None:
        """The request ended (once); ``finish_reasons`` has one entry per completion."""
        if self._finished:
            return
        self._finished = True
        self._m.prompt_tokens.inc(self.num_prompt_tokens)
        self._m.generation_tokens.inc(self.num_generated)
        self._m.e2e.observe(now - self._arrival)
        for reason in finish_reasons:
            self._m.requests_finished.labels(finish_reason=reason).inc()
        decode_s = now - self._first_token_time if self._first_token_time is not None else 0.0
        self._m.vllm.on_finish(
            finish_reasons,
            self.num_prompt_tokens,
            self.num_generated,
            now - self._arrival,
            decode_s,
        )
