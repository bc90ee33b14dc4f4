"""What the engine logs: one start-up summary line, and (unless ``disable_log_stats``)
throughput and cache statistics every few seconds, as vLLM's ``LoggingStatLogger`` does."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("mmcore.engine")

LOG_INTERVAL_S = 10.0


def _ensure_visible() -> None:
    """Show mmcore's INFO lines on stderr when the program configured no logging (as vLLM
    does), so an offline script sees the start-up summary; configured logging is left alone."""
    package = logging.getLogger("mmcore")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


def log_startup(engine: Any, load_s: float) -> str:
    """Log (INFO) and return the one-line start-up summary.

    Args:
        engine: the constructed Engine.
        load_s: seconds from the constructor's start (files, weights, profiling, graphs).
    """
    cfg = engine.config
    graphs = engine.runner.decode_graphs if engine.runner is not None else None
    graph_text = f"{len(graphs.sizes)} CUDA graphs captured" if graphs else "eager (no CUDA graphs)"
    dtype = str(cfg.dtype).removeprefix("torch.")
    ranks = cfg.parallel.tensor_parallel_size
    where = (
        type(engine.model).__name__
        if engine.model is not None
        else f"{ranks} ranks, {cfg.parallel.backend}; KV per rank"
    )
    if engine.model is None and engine.runner is None:
        graph_text = "CUDA graphs per rank"
    weights = f"weights={cfg.quantization} " if cfg.quantization else ""
    line = (
        f"engine ready: model={cfg.model_path} ({where}) "
        f"device={cfg.device} dtype={dtype} {weights}"
        f"KV cache={cfg.num_blocks} blocks x {cfg.block_size} = "
        f"{cfg.num_blocks * cfg.block_size} tokens "
        f"({cfg.num_blocks * cfg.kv_block_bytes / (1 << 30):.2f} GiB{_groups_text(cfg)}), "
        f"max_model_len={cfg.max_model_len}, "
        f"{graph_text}, loaded in {load_s:.1f} s"
    )
    _ensure_visible()
    logger.info(line)
    return line


class StatLogger:
    """Logs running/waiting requests, KV cache use, prefix hit rate and token throughput."""

    def __init__(self, engine: Any, interval_s: float = LOG_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._last_time = time.monotonic()
        self._last_tokens = 0
        self._last_prompt_tokens = 0

    def maybe_log(self) -> str | None:
        """Log a line when ``interval_s`` has passed since the last; return it (or None)."""
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < self._interval_s:
            return None
        engine = self._engine
        stats = engine.scheduler.stats()
        tokens = engine.num_generated_tokens
        prompt_tokens = getattr(engine, "num_prompt_tokens", 0)
        used, total = stats["kv_blocks_used"], max(1, engine.config.num_blocks)
        hit_rate = stats["prefix_hits"] / max(1, stats["prefix_queries"])
        encoder_hit_rate = stats.get("encoder_hits", 0) / max(1, stats.get("encoder_queries", 0))
        line = (
            f"prompt: {(prompt_tokens - self._last_prompt_tokens) / elapsed:.1f} tokens/s, "
            f"generation: {(tokens - self._last_tokens) / elapsed:.1f} tokens/s, "
            f"running: {stats['num_running']} reqs, waiting: {stats['num_waiting']} reqs, "
            f"KV cache usage: {100.0 * used / total:.1f}%, prefix cache hit rate: "
            f"{100.0 * hit_rate:.1f}%, encoder cache hit rate: {100.0 * encoder_hit_rate:.1f}%, "
            f"preemptions: {stats['num_preemptions']}"
        )
        self._last_time, self._last_tokens = now, tokens
        self._last_prompt_tokens = prompt_tokens
        logger.info(line)
        return line


def _groups_text(cfg) -> str:
    """Hybrid KV cache: how many groups share the blocks (docs/kv_cache.md); empty otherwise."""
    windows = list(cfg.scheduler_config.kv_group_windows)
    if len(windows) <= 1:
        return ""
    sliding = sum(1 for w in windows if w > 0)
    return f", {len(windows)} KV cache groups: {sliding} sliding-window, a block id per group"
