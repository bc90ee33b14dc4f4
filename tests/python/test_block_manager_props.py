"""Property tests of the KV block manager (``_core.BlockManager``) over random workloads.

The Python side models what every KV slot must hold: the slot of position ``p`` of a request
holds the KV of that request's prefix ``[0, p]`` (its tokens, the items starting at or before
``p`` and its cache salt). After every operation, every computed position of every live request
must find exactly its own prefix in its block table, so no block is ever shared between
different contents (different images, salts or tokens) and nothing is lost or leaked.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcore import _core

BLOCK_SIZE = 4


class Model:
    """Python mirror of the requests and of what each physical slot holds."""

    def __init__(self, num_blocks: int, prefix_caching: bool) -> None:
        self.bm = _core.BlockManager(num_blocks, BLOCK_SIZE, prefix_caching)
        self.num_blocks = num_blocks
        self.tokens: dict[int, list[int]] = {}
        self.items: dict[int, list[tuple[str, int, int]]] = {}
        self.salt: dict[int, str] = {}
        self.slots: dict[tuple[int, int], tuple] = {}  # (block, offset) -> prefix key

    def prefix_key(self, rid: int, pos: int) -> tuple:
        items = tuple((i, o) for i, o, _ in self.items[rid] if o <= pos)
        return (self.salt[rid], tuple(self.tokens[rid][: pos + 1]), items)

    def write(self, rid: int, start: int, end: int) -> None:
        table = self.bm.block_table(rid)
        for pos in range(start, end):
            self.slots[(int(table[pos // BLOCK_SIZE]), pos % BLOCK_SIZE)] = self.prefix_key(
                rid, pos
            )

    def check(self) -> None:
        self.bm.check_invariants()
        held = set()
        for rid in self.tokens:
            table = self.bm.block_table(rid)
            computed = self.bm.num_computed_tokens(rid)
            assert len(table) * BLOCK_SIZE >= computed
            assert len(set(table.tolist())) == len(table)
            held.update(table.tolist())
            for pos in range(computed):
                slot = (int(table[pos // BLOCK_SIZE]), pos % BLOCK_SIZE)
                assert self.slots.get(slot) == self.prefix_key(rid, pos), (
                    f"request {rid} position {pos} reads KV of another content"
                )
        stats = self.bm.stats()
        assert stats["kv_blocks_used"] == len(held)
        assert stats["kv_blocks_used"] + stats["kv_blocks_free"] == self.num_blocks
        assert 0 <= stats["prefix_hits"] <= stats["prefix_queries"]


BASES = [[1, 2, 3, 1, 2, 3, 1, 2], [1, 2, 3, 1, 9, 9, 9, 9], [5] * 8]


@st.composite
def request_contents(draw):
    base = draw(st.sampled_from(BASES))
    cut = draw(st.integers(0, len(base)))
    tokens = base[:cut] + draw(st.lists(st.integers(1, 3), max_size=14))
    if not tokens:
        tokens = [1]
    items = []
    pos = draw(st.integers(0, 3))
    while pos < len(tokens) and len(items) < 2 and draw(st.booleans()):
        length = draw(st.integers(1, 6))
        if pos + length > len(tokens):
            break
        items.append((draw(st.sampled_from(["cat", "dog"])), pos, length))
        pos += length + draw(st.integers(0, 3))
    salt = draw(st.sampled_from(["", "", "alice"]))
    return tokens, items, salt


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    num_blocks=st.integers(3, 14),
    prefix_caching=st.booleans(),
)
def test_random_operations_keep_every_slot_consistent(data, num_blocks, prefix_caching):
    model = Model(num_blocks, prefix_caching)
    next_id = 0
    for _ in range(data.draw(st.integers(5, 45), label="num_ops")):
        live = sorted(model.tokens)
        op = data.draw(st.sampled_from(["add", "allocate", "allocate", "append", "free", "remove"]))
        if op == "add" or not live:
            tokens, items, salt = data.draw(request_contents(), label="request")
            model.bm.add_request(next_id, np.array(tokens, dtype=np.int32), items, salt)
            model.tokens[next_id], model.items[next_id], model.salt[next_id] = tokens, items, salt
            next_id += 1
        else:
            rid = data.draw(st.sampled_from(live), label="request_id")
            computed = model.bm.num_computed_tokens(rid)
            if op == "allocate":
                had_blocks = len(model.bm.block_table(rid)) > 0
                hit = 0 if had_blocks else len(model.bm.get_computed_blocks(rid)) * BLOCK_SIZE
                remaining = len(model.tokens[rid]) - computed - hit
                if remaining <= 0:
                    continue
                n = data.draw(st.integers(1, remaining), label="num_new_tokens")
                can = model.bm.can_allocate(rid, n)
                got = model.bm.allocate(rid, n)
                assert (got is not None) == can
                if got is not None:
                    assert got == hit
                    assert prefix_caching or hit == 0
                    # The hit must already hold exactly this prefix; the rest is computed now.
                    model.write(rid, computed + hit, computed + hit + n)
            elif op == "append":
                more = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=6))
                model.bm.append_tokens(rid, np.array(more, dtype=np.int32))
                model.tokens[rid] = model.tokens[rid] + more
            elif op == "free":
                model.bm.free(rid)
            else:
                model.bm.remove_request(rid)
                del model.tokens[rid]
        model.check()
    for rid in list(model.tokens):
        model.bm.remove_request(rid)
    model.bm.check_invariants()
    assert model.bm.stats()["kv_blocks_used"] == 0


def test_same_image_shares_blocks_and_different_image_does_not():
    bm = _core.BlockManager(16, BLOCK_SIZE)
    tokens = np.full(12, 7, dtype=np.int32)
    bm.add_request(0, tokens, [("cat", 0, 8)])
    assert bm.allocate(0, 12) == 0
    bm.add_request(1, tokens, [("dog", 0, 8)])
    assert bm.allocate(1, 12) == 0
    bm.add_request(2, tokens, [("cat", 0, 8)])
    assert bm.allocate(2, 4) == 8
    assert bm.block_table(2)[:2].tolist() == bm.block_table(0)[:2].tolist()
    assert not set(bm.block_table(1).tolist()) & set(bm.block_table(0).tolist())
    assert bm.stats()["prefix_hits"] == 8
    bm.check_invariants()


def test_bad_input_is_a_value_error():
    bm = _core.BlockManager(4, BLOCK_SIZE)
    with pytest.raises(ValueError, match="unknown request 3"):
        bm.allocate(3, 1)
    with pytest.raises(ValueError, match="inside the tokens"):
        bm.add_request(0, np.arange(4, dtype=np.int32), [("cat", 2, 5)])
    with pytest.raises(ValueError, match="num_blocks"):
        _core.BlockManager(0, BLOCK_SIZE)
