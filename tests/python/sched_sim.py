"""A simulated model and workload runner for the scheduler property tests.

The model keeps a paged "KV cache" (slot -> value). The value written for position ``p`` chains
the value of position ``p - 1`` (read back through the block table), the input at ``p`` (token
id, or the encoder embedding scattered into that row) and the position. The sampled token is a
hash of the last value. A wrong block, slot, position, input id or embedding therefore changes
every later token, and the outputs must equal those of ``reference_outputs``, which computes the
same chain per request without any scheduler.

With KV cache groups (``group_windows``: -1 full, W sliding; group 0 is the one above), each
token also reads, through each other group's table, the value of the oldest key it can see in
that group (position ``p - W + 1`` for a sliding group, ``p - 1`` for a full one) and mixes it
in; a released block the window still needs, or a prefix-cache hit with wrong content, changes
the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmcore import _core

VOCAB = 12


def mix(*values) -> int:
    """Deterministic hash of a tuple of ints / strings (stable within one process)."""
    return hash(values) & 0xFFFFFFFF


def embedding(identifier: str, index: int) -> int:
    return 1_000_000 + mix("embed", identifier, index) % 1_000_000


@dataclass
class Feature:
    """Duck-typed stand-in for ``_core.MMFeature`` (used when that class is not bound)."""

    modality: object
    identifier: str
    offset: int
    length: int
    num_embeds: int
    embed_mask: np.ndarray | None = None


def make_feature(identifier, offset, length, mask=None):
    num_embeds = length if mask is None else int(np.count_nonzero(mask))
    mask_arr = None if mask is None else np.asarray(mask, dtype=np.uint8)
    if hasattr(_core, "MMFeature"):
        return _core.MMFeature(
            _core.Modality.IMAGE, identifier, offset, length, num_embeds, mask_arr
        )
    return Feature(_core.Modality.IMAGE, identifier, offset, length, num_embeds, mask_arr)


@dataclass
class Spec:
    """One request of a workload."""

    rid: int
    tokens: list[int]
    items: list[tuple[str, int, int, list[int] | None]]  # identifier, offset, length, mask
    max_tokens: int
    min_tokens: int = 0
    eos: list[int] = field(default_factory=list)
    stop: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    priority: int = 0
    salt: str = ""
    mrope: np.ndarray | None = None  # (3, len(tokens)) int64
    mrope_delta: int = 0

    def input_value(self, pos: int) -> int:
        """What the model must see at prompt position ``pos``: an embedding or the token."""
        for identifier, offset, length, mask in self.items:
            if offset <= pos < offset + length:
                k = pos - offset
                if mask is None:
                    return embedding(identifier, k)
                if mask[k]:
                    return embedding(identifier, int(sum(mask[:k])))
        return self.tokens[pos] if pos < len(self.tokens) else -999

    def position(self, pos: int):
        if self.mrope is None:
            return pos
        if pos < len(self.tokens):
            return tuple(int(x) for x in self.mrope[:, pos])
        return (pos + self.mrope_delta,) * 3


def group_key(pos: int, window: int) -> int:
    """The key position a token at ``pos`` reads in a group of ``window`` (-1: full), or -1."""
    key = pos - 1 if window <= 0 else max(0, pos - window + 1)
    return key if key < pos else -1


def reference_outputs(
    spec: Spec, max_model_len: int, group_windows: tuple[int, ...] = ()
) -> tuple[list[int], str]:
    """The tokens and finish reason an ideal engine produces for ``spec``."""
    seq = list(spec.tokens)
    value = 0
    values: list[int] = []
    out: list[int] = []
    pos = 0
    while True:
        while pos < len(seq):
            inp = spec.input_value(pos) if pos < len(spec.tokens) else seq[pos]
            reads = [group_key(pos, w) for w in group_windows[1:]]
            extra = [values[k] if k >= 0 else 0 for k in reads]
            value = mix(value if pos > 0 else 0, inp, spec.position(pos), *extra)
            values.append(value)
            pos += 1
        tok = mix("sample", value) % VOCAB
        out.append(tok)
        seq.append(tok)
        n = len(out)
        if n >= spec.min_tokens and ((not spec.ignore_eos and tok in spec.eos) or tok in spec.stop):
            return out, "stop"
        if n >= spec.max_tokens or len(seq) >= max_model_len:
            return out, "length"


class SimModel:
    """Executes SchedulerOutputs against a paged KV dict and an encoder-output dict."""

    def __init__(
        self, specs: dict[int, Spec], block_size: int, group_windows: tuple[int, ...] = ()
    ) -> None:
        self.specs = specs
        self.bs = block_size
        self.kv: dict[int, int] = {}
        self.group_windows = tuple(group_windows)
        self.group_kv: list[dict[int, int]] = [{} for _ in self.group_windows[1:]]
        self.encoder: dict[int, list[int]] = {}
        self.prev_sampled = np.zeros(0, dtype=np.int32)

    def execute(self, out) -> np.ndarray:
        for h in out.freed_encoder_handles.tolist():
            assert h in self.encoder, f"freed encoder handle {h} was never encoded"
            del self.encoder[h]
        for rid, idx, h in zip(
            out.encoder_req_ids.tolist(),
            out.encoder_item_indices.tolist(),
            out.encoder_handles.tolist(),
        ):
            assert h not in self.encoder, f"encoder handle {h} encoded twice"
            identifier, _, length, mask = self.specs[rid].items[idx]
            n = length if mask is None else sum(mask)
            self.encoder[h] = [embedding(identifier, k) for k in range(n)]
        rows: dict[int, int] = {}
        for h, src, dst, n in zip(
            out.scatter_handles.tolist(),
            out.scatter_src_offsets.tolist(),
            out.scatter_dst_rows.tolist(),
            out.scatter_lens.tolist(),
        ):
            assert h in self.encoder, f"scatter reads handle {h} before it is encoded"
            for k in range(n):
                assert dst + k not in rows, "two scatter entries write one row"
                rows[dst + k] = self.encoder[h][src + k]
        ids = out.input_ids.tolist()
        pos = out.positions
        qsl = out.query_start_loc.tolist()
        values = [0] * out.num_tokens
        groups = len(self.group_kv)
        assert out.num_kv_groups == groups + 1
        for i, rid in enumerate(out.req_ids.tolist()):
            spec = self.specs[rid]
            table = out.block_tables[i].tolist()
            psi = int(out.prev_sample_index[i])
            for t in range(qsl[i], qsl[i + 1]):
                if out.position_dims == 1:
                    p = int(pos[t])
                else:
                    p = tuple(int(x) for x in pos[:, t])
                    if spec.mrope is None:  # 1-D requests repeat their position in all rows
                        assert p[0] == p[1] == p[2]
                        p = p[0]
                abs_pos = int(out.num_computed_tokens[i]) + t - qsl[i]
                tok = ids[t]
                if tok == -1:
                    assert psi >= 0 and t == qsl[i + 1] - 1, "-1 input without a sample index"
                    tok = int(self.prev_sampled[psi])
                inp = rows.get(t, tok)
                if abs_pos < len(spec.tokens):
                    expect_embed = spec.input_value(abs_pos) >= 1_000_000
                    assert (t in rows) == expect_embed, (
                        f"request {rid} position {abs_pos}: embedding scattered={t in rows}"
                    )
                prev = 0
                if abs_pos > 0:
                    b = table[(abs_pos - 1) // self.bs]
                    assert b >= 0, "block table does not cover the previous position"
                    prev = self.kv[b * self.bs + (abs_pos - 1) % self.bs]
                slot = int(out.slot_mapping[t])
                assert slot == table[abs_pos // self.bs] * self.bs + abs_pos % self.bs
                extra = [self._group_read(out, g, i, t, abs_pos) for g in range(groups)]
                values[t] = self.kv[slot] = mix(prev, inp, p, *extra)
                for g in range(groups):
                    self.group_kv[g][int(out.group_slot_mapping[g][t])] = values[t]
        sampled = np.array(
            [mix("sample", values[t]) % VOCAB for t in out.logits_indices.tolist()],
            dtype=np.int32,
        )
        self.prev_sampled = sampled
        return sampled

    def _group_read(self, out, g: int, row: int, t: int, pos: int) -> int:
        """Group g + 1's value at the key token t (position pos) reads (0: none)."""
        table = out.group_block_tables[row * len(self.group_kv) + g]
        slot = int(out.group_slot_mapping[g][t])
        assert slot == table[pos // self.bs] * self.bs + pos % self.bs
        key = group_key(pos, self.group_windows[g + 1])
        if key < 0:
            return 0
        block = int(table[key // self.bs])
        assert block >= 0, f"group {g + 1} released the block of key {key} (position {pos})"
        return self.group_kv[g][block * self.bs + key % self.bs]
