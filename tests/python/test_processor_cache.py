"""mmcore.multimodal.processor_cache.ProcessorCache: LRU by tensor bytes, counters, threads."""

import threading

import numpy as np
import pytest
import torch

from mmcore.multimodal.processor_cache import ProcessorCache, nbytes_of


def output(num_floats):
    return {"pixel_values": torch.zeros(num_floats, dtype=torch.float32), "grid": [1, 2]}


def test_nbytes_counts_tensors_and_arrays_only():
    value = {
        "a": torch.zeros(10, dtype=torch.float16),
        "b": [np.zeros(3, np.int64), (torch.zeros(2, 2),)],
        "c": "text",
        "d": 7,
    }
    assert nbytes_of(value) == 20 + 24 + 16


def test_hit_and_miss_counters():
    cache = ProcessorCache(10_000)
    assert cache.get("h1") is None
    value = output(4)
    assert cache.put("h1", value)
    assert cache.get("h1")["pixel_values"] is value["pixel_values"]
    assert cache.get("h1", {"size": 224}) is None  # other kwargs, other entry
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.num_entries, stats.num_bytes) == (1, 2, 1, 16)


def test_kwargs_are_part_of_the_key():
    cache = ProcessorCache(10_000)
    cache.put("h", output(1), {"size": 224, "pad": True})
    cache.put("h", output(2), {"size": 336})
    assert len(cache) == 2
    assert cache.get("h", {"pad": True, "size": 224})["pixel_values"].numel() == 1
    assert ("h", {"size": 336}) in cache
    assert ("h", None) not in cache


def test_lru_eviction_by_bytes():
    cache = ProcessorCache(4 * 100)  # room for 100 float32
    cache.put("a", output(40))
    cache.put("b", output(40))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("c", output(40))  # 120 floats > 100: evicts b, the least recently used
    assert ("b", None) not in cache
    assert ("a", None) in cache and ("c", None) in cache
    assert cache.num_bytes == 4 * 80
    cache.put("d", output(90))  # needs both a and c gone
    assert len(cache) == 1 and cache.num_bytes == 4 * 90


def test_replacing_an_entry_updates_its_size():
    cache = ProcessorCache(4 * 100)
    cache.put("a", output(10))
    cache.put("a", output(60))
    assert len(cache) == 1 and cache.num_bytes == 4 * 60


def test_value_larger_than_the_cache_is_not_stored():
    cache = ProcessorCache(100)
    cache.put("small", output(5))
    assert not cache.put("huge", output(1000))
    assert ("huge", None) not in cache
    assert ("small", None) in cache  # nothing evicted for a value that can never fit
    assert not ProcessorCache(0).put("x", output(1))


def test_get_or_compute_calls_once():
    cache = ProcessorCache(10_000)
    calls = []

    def compute():
        calls.append(1)
        return output(3)

    first = cache.get_or_compute("h", compute, {"k": 1})
    second = cache.get_or_compute("h", compute, {"k": 1})
    assert len(calls) == 1 and first["pixel_values"] is second["pixel_values"]
    assert (cache.hits, cache.misses) == (1, 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_bytes"):
        ProcessorCache(-1)
    cache = ProcessorCache(10)
    with pytest.raises(ValueError, match="item_hash"):
        cache.get("")
    with pytest.raises(ValueError, match="dicts"):
        cache.put("h", torch.zeros(1))


def test_thread_safety_keeps_bytes_consistent():
    cache = ProcessorCache(4 * 500)
    barrier = threading.Barrier(4)

    def worker(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(300):
            key = f"k{rng.integers(40)}"
            if cache.get(key) is None:
                cache.put(key, output(int(rng.integers(1, 120))))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 4 * 300
    assert stats.num_bytes <= stats.max_bytes
    # The byte count matches the entries actually held.
    held = sum(nbytes_of(v) for v, _ in cache._entries.values())
    assert held == stats.num_bytes
