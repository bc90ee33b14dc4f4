"""Benchmark statistics: throughput and latency percentiles over per-request results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestResult:
    """What one benchmark request measured.

    Attributes:
        ok: whether it completed without error.
        output_tokens: tokens generated.
        prompt_tokens: prompt tokens (as the server counted them; 0 if unknown).
        ttft_s: time to the first token.
        latency_s: time to the last token.
        error: the error message when not ok.
    """

    ok: bool
    output_tokens: int = 0
    prompt_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two tokens)."""
        if self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class BenchSummary:
    """Aggregates of a benchmark run (times in seconds)."""

    num_requests: int
    num_errors: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_output_tokens: int
    total_prompt_tokens: int
    ttft: dict[str, float] = field(default_factory=dict)
    tpot: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def format(self) -> str:
        """A human-readable report."""
        lines = [
            f"requests:           {self.num_requests} ({self.num_errors} errors)",
            f"duration:           {self.duration_s:.2f} s",
            f"request throughput: {self.request_throughput:.2f} req/s",
            f"output throughput:  {self.output_throughput:.1f} tok/s",
            f"prompt tokens:      {self.total_prompt_tokens}",
            f"output tokens:      {self.total_output_tokens}",
        ]
        for name, values in (("TTFT", self.ttft), ("TPOT", self.tpot)):
            if values:
                lines.append(
                    f"{name} (ms):          mean {values['mean'] * 1e3:.1f}  "
                    f"p50 {values['p50'] * 1e3:.1f}  p99 {values['p99'] * 1e3:.1f}"
                )
        for err in self.errors[:5]:
            lines.append(f"error: {err}")
        return "\n".join(lines)


def _distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


def summarize(results: list[RequestResult], duration_s: float) -> BenchSummary:
    """Throughput over the run's wall time; TTFT/TPOT over the successful requests.

    Args:
        results: one per request.
        duration_s: wall time of the whole run.

    Returns:
        The summary.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    return BenchSummary(
        num_requests=len(results),
        num_errors=len(results) - len(ok),
        duration_s=duration_s,
        request_throughput=len(ok) / duration_s,
        output_throughput=out_tokens / duration_s,
        total_output_tokens=out_tokens,
        total_prompt_tokens=sum(r.prompt_tokens for r in ok),
        ttft=_distribution([r.ttft_s for r in ok]),
        tpot=_distribution([t for r in ok if (t := r.tpot_s) is not None]),
        errors=[r.error or "unknown error" for r in results if not r.ok],
    )
