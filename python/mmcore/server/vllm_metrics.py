"""The server's metrics also under vLLM's names (``vllm:*``, labelled ``model_name``), so
dashboards and alerts written for ``vllm serve`` work against ``mmcore serve`` unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Request sizes in tokens, as vLLM buckets them (1, 2, 5 steps up to the longest context).
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _EngineGauges(Collector):
    """vLLM's scheduler gauges and prefix cache counters, read from the engine's stats snapshot
    at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]], model_name: str) -> None:
        self._stats = stats
        self._model_name = model_name

    def collect(self):
        s = self._stats()
        labels = ["model_name"]
        values = [self._model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            return family

        used, total = s.get("kv_blocks_used", 0), s.get("num_blocks", 0)
        usage = used / total if total else 0.0
        running = s.get("num_running", s.get("num_active_requests", 0))
        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", running
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            s.get("num_waiting", 0),
        )
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
        yield gauge(
            "vllm:gpu_cache_usage_perc",
            "KV-cache usage (the older name of kv_cache_usage_perc).",
            usage,
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in tokens.",
            s.get("prefix_queries", 0),
        )
        yield counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", s.get("prefix_hits", 0)
        )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemptions.", s.get("num_preemptions", 0)
        )


class VllmMetrics:
    """Per-request metrics under vLLM's names, fed by ``RequestRecorder`` next to mmcore's own.

    Args:
        registry: the server's registry.
        engine_stats: returns the engine's latest stats dict.
        model_name: the served model name (the ``model_name`` label).
        ttft_buckets / itl_buckets / e2e_buckets: histogram buckets in seconds.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        engine_stats: Callable[[], dict[str, Any]],
        model_name: str,
        ttft_buckets: tuple[float, ...],
        itl_buckets: tuple[float, ...],
        e2e_buckets: tuple[float, ...],
    ) -> None:
        self.model_name = model_name
        r, labels = registry, ["model_name"]

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(model_name)

        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
        ).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        ).labels(model_name)
        self._request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels + ["finished_reason"],
            registry=r,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ttft_buckets,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            itl_buckets,
        )
        self.tpot = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            itl_buckets,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            e2e_buckets,
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", _TOKEN_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            _TOKEN_BUCKETS,
        )
        r.register(_EngineGauges(engine_stats, model_name))

    def on_finish(
        self, reasons: list[str], num_prompt: int, num_generated: int, e2e_s: float, decode_s: float
    ) -> None:
        """One request ended: counts, sizes, latency; time per output token after the first."""
        self.prompt_tokens.inc(num_prompt)
        self.generation_tokens.inc(num_generated)
        self.e2e.observe(e2e_s)
        self.request_prompt_tokens.observe(num_prompt)
        self.request_generation_tokens.observe(num_generated)
        if num_generated > 1:
            self.tpot.observe(decode_s / (num_generated - 1))
        for reason in reasons:
            if reason in ("stop", "length", "abort"):
                self._request_success.labels(self.model_name, reason).inc()
