"""Property test of _core.EncoderCacheManager against a plain-Python model of the contract.

Random allocate / acquire / release / release_all / take_freed sequences: the C++ invariants hold,
used space never exceeds capacity, referenced entries are never evicted, eviction is LRU among
unreferenced entries, and the freed handles are exactly the evicted entries' handles.
"""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mmcore import _core

IDENTIFIERS = st.sampled_from([f"item-{i}" for i in range(8)])
REQUESTS = st.integers(min_value=0, max_value=4)
SIZES = st.integers(min_value=1, max_value=8)


class EncoderCacheMachine(RuleBasedStateMachine):
    @initialize(capacity=st.integers(min_value=0, max_value=24))
    def create(self, capacity):
        self.capacity = capacity
        self.cache = _core.EncoderCacheManager(capacity)
        self.handles = {}  # identifier -> handle
        self.sizes = {}  # identifier -> num_embeds
        self.holders = {}  # identifier -> set of requests
        self.lru = []  # unreferenced identifiers, least recently released first
        self.acquired = {}  # request -> identifiers it references, in acquisition order
        self.pending_freed = []
        self.all_handles = set()

    def _used(self):
        return sum(self.sizes.values())

    def _evictable(self):
        return sum(self.sizes[i] for i in self.lru)

    def _unpin_if_free(self, identifier):
        if not self.holders[identifier]:
            self.lru.append(identifier)

    @rule(identifier=IDENTIFIERS, num_embeds=SIZES, request=REQUESTS)
    def allocate(self, identifier, num_embeds, request):
        fits = num_embeds <= self.capacity - self._used() + self._evictable()
        assert self.cache.can_allocate(num_embeds) == fits
        if identifier in self.handles or not fits:
            with pytest.raises(ValueError):
                self.cache.allocate(identifier, num_embeds, request)
            return
        while self.capacity - self._used() < num_embeds:
            victim = self.lru.pop(0)
            assert not self.holders[victim], "model bug: evicting a referenced entry"
            self.pending_freed.append(self.handles.pop(victim))
            del self.sizes[victim], self.holders[victim]
        handle = self.cache.allocate(identifier, num_embeds, request)
        assert handle not in self.all_handles, "handle reused"
        self.all_handles.add(handle)
        self.handles[identifier] = handle
        self.sizes[identifier] = num_embeds
        self.holders[identifier] = {request}
        self.acquired.setdefault(request, []).append(identifier)

    @rule(identifier=IDENTIFIERS, request=REQUESTS)
    def acquire(self, identifier, request):
        if identifier not in self.handles:
            with pytest.raises(ValueError):
                self.cache.acquire(identifier, request)
            return
        assert self.cache.acquire(identifier, request) == self.handles[identifier]
        if request in self.holders[identifier]:
            return
        if not self.holders[identifier]:
            self.lru.remove(identifier)
        self.holders[identifier].add(request)
        self.acquired.setdefault(request, []).append(identifier)

    @rule(identifier=IDENTIFIERS, request=REQUESTS)
    def release(self, identifier, request):
        self.cache.release(identifier, request)
        if identifier in self.holders and request in self.holders[identifier]:
            self.holders[identifier].discard(request)
            self.acquired[request].remove(identifier)
            self._unpin_if_free(identifier)

    @rule(request=REQUESTS)
    def release_all(self, request):
        self.cache.release_all(request)
        # Released in the order the request acquired them: older acquisitions are evicted first.
        for identifier in self.acquired.pop(request, []):
            self.holders[identifier].discard(request)
            self._unpin_if_free(identifier)

    @rule(identifier=IDENTIFIERS)
    def lookup(self, identifier):
        before = self.cache.stats()
        assert self.cache.lookup(identifier) == (identifier in self.handles)
        after = self.cache.stats()
        assert after.num_queries == before.num_queries + 1
        assert after.num_hits == before.num_hits + (identifier in self.handles)

    @rule()
    def take_freed(self):
        assert self.cache.take_freed() == self.pending_freed
        self.pending_freed = []

    @invariant()
    def matches_model(self):
        if not hasattr(self, "cache"):
            return
        self.cache.check_invariants()
        stats = self.cache.stats()
        assert stats.used_embeds == self._used() <= self.capacity
        assert stats.num_entries == len(self.handles)
        assert stats.num_referenced_entries == sum(1 for h in self.holders.values() if h)
        assert self.cache.evictable_embeds == self._evictable()
        for identifier, holders in self.holders.items():
            if holders:  # referenced entries are never evicted
                assert self.cache.contains(identifier)
        for identifier in (f"item-{i}" for i in range(8)):
            assert self.cache.contains(identifier) == (identifier in self.handles)
            assert self.cache.handle(identifier) == self.handles.get(identifier)
            assert self.cache.num_refs(identifier) == len(self.holders.get(identifier, ()))


EncoderCacheMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_encoder_cache_matches_model = EncoderCacheMachine.TestCase


def test_binding_reports_errors_as_value_error():
    cache = _core.EncoderCacheManager(4)
    with pytest.raises(ValueError, match="does not hold item 'x'"):
        cache.acquire("x", 1)
    cache.allocate("x", 4, 1)
    with pytest.raises(ValueError, match="cannot fit item 'y' of 2 embeddings"):
        cache.allocate("y", 2, 2)
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        _core.EncoderCacheManager(-5)
    assert "x" in cache
    assert cache.stats().used_embeds == 4
