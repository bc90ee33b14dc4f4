"""Property test of encoder-decoder requests in the core over random schedules (hypothesis).

A simulated runner keeps a paged cache (slot -> value). The step that fills a request's cross
blocks writes, for encoder position p, a value of the encoder output (audio identifier, p); every
decoder token's value chains the previous position's value, its input token, its position and a
digest of the cross values read through the cross block table. Sampled tokens derive from that
value, so a wrong cross block, slot, length or a missing fill changes the outputs, which must equal
a scheduler-free reference. check_invariants() runs after every schedule and update; at the end,
and after aborts and preemptions, every block is back in the free pool.
"""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings

from mmcore import _core

VOCAB = 7


def mix(*values) -> int:
    return hash(values) & 0xFFFFFFFF


class EncoderInput:
    """Duck-typed encoder input (the binding reads these attributes)."""

    def __init__(self, identifier: str, num_embeds: int):
        self.modality = _core.Modality.AUDIO
        self.identifier = identifier
        self.offset = 0
        self.length = 0
        self.num_embeds = num_embeds
        self.embed_mask = None


def reference(prompt: list[int], audio: str, enc_len: int, max_tokens: int) -> list[int]:
    """The outputs without a scheduler: same chain, position by position."""
    cross = mix(*[mix(audio, p) for p in range(enc_len)])
    tokens, prev, out = list(prompt), 0, []
    for p in range(len(prompt) + max_tokens - 1):
        prev = mix(prev, tokens[p], p, cross)
        if p >= len(prompt) - 1:
            out.append(prev % VOCAB)
            tokens.append(out[-1])
    return out[:max_tokens]


class SimRunner:
    def __init__(self):
        self.cache: dict[int, int] = {}
        self.encoder: dict[int, str] = {}  # handle -> audio identifier (the "encoder output")
        self.audio: dict[int, str] = {}

    def run(self, out) -> np.ndarray:
        for handle in out.freed_encoder_handles.tolist():
            self.encoder.pop(handle, None)
        for rid, handle in zip(out.encoder_req_ids.tolist(), out.encoder_handles.tolist()):
            assert handle not in self.encoder, "an encoder output was computed twice"
            self.encoder[handle] = self.audio[rid]
        slots = out.cross_slot_mapping.tolist()
        start = 0
        for row, handle in zip(out.cross_fill_rows.tolist(), out.cross_fill_handles.tolist()):
            audio = self.encoder[handle]
            n = int(out.cross_seq_lens[row])
            for p in range(n):
                self.cache[slots[start + p]] = mix(audio, p)
            start += n
        assert start == len(slots)
        bs = BLOCK_SIZE
        sampled = []
        qsl = out.query_start_loc.tolist()
        for b in range(out.num_reqs):
            table = out.block_tables[b]
            cross_table = out.cross_block_tables[b]
            n_cross = int(out.cross_seq_lens[b])
            cross = mix(
                *[self.cache[int(cross_table[p // bs]) * bs + p % bs] for p in range(n_cross)]
            )
            for t in range(qsl[b], qsl[b + 1]):
                p = int(out.positions[t])
                prev = 0 if p == 0 else self.cache[int(table[(p - 1) // bs]) * bs + (p - 1) % bs]
                self.cache[int(out.slot_mapping[t])] = mix(prev, int(out.input_ids[t]), p, cross)
        for row in out.logits_indices.tolist():
            sampled.append(self.cache[int(out.slot_mapping[row])] % VOCAB)
        return np.asarray(sampled, dtype=np.int32)


BLOCK_SIZE = 4


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_encoder_decoder_schedules(data):
    cfg = _core.SchedulerConfig()
    cfg.num_blocks = data.draw(st.integers(12, 40))
    cfg.block_size = BLOCK_SIZE
    cfg.max_num_batched_tokens = data.draw(st.integers(4, 24))
    cfg.max_num_seqs = data.draw(st.integers(1, 6))
    cfg.max_model_len = 24
    cfg.encoder_budget = 16
    cfg.encoder_cache_size = data.draw(st.integers(16, 48))
    cfg.enable_chunked_prefill = True
    sched, runner = _core.Scheduler(cfg), SimRunner()
    specs = {}
    num_requests = data.draw(st.integers(1, 8))
    pending = list(range(num_requests))
    outputs: dict[int, list[int]] = {}
    aborted, finished = set(), set()
    for _ in range(400):
        if pending and data.draw(st.booleans()):
            rid = pending.pop(0)
            prompt = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8))
            audio = data.draw(st.sampled_from(["a", "b", "c"]))
            enc_len = {"a": 6, "b": 11, "c": 16}[audio]
            max_tokens = data.draw(st.integers(1, 8))
            specs[rid] = (prompt, audio, enc_len, max_tokens)
            runner.audio[rid] = audio
            sched.add_request(
                rid, prompt, [], max_tokens=max_tokens, encoder_input=EncoderInput(audio, enc_len)
            )
            outputs[rid] = []
        live = [r for r in specs if r not in aborted and r not in finished]
        if live and data.draw(st.integers(0, 9)) == 0:
            victim = data.draw(st.sampled_from(live))
            sched.finish_request(victim, "abort")
            aborted.add(victim)
        sched.check_invariants()
        if not sched.has_unfinished_requests() and not pending:
            break
        out = sched.schedule()
        sched.check_invariants()
        result = sched.update_from_output(out, runner.run(out))
        for rid, token in zip(result.req_ids.tolist(), result.token_ids.tolist()):
            outputs[rid].append(token)
        finished.update(result.finished_req_ids.tolist())
        sched.check_invariants()
    while sched.has_unfinished_requests():  # drain
        out = sched.schedule()
        result = sched.update_from_output(out, runner.run(out))
        for rid, token in zip(result.req_ids.tolist(), result.token_ids.tolist()):
            outputs[rid].append(token)
        sched.check_invariants()
    stats = sched.stats()
    assert stats["kv_blocks_free"] == cfg.num_blocks
    assert stats["encoder_referenced_entries"] == 0
    for rid, (prompt, audio, enc_len, max_tokens) in specs.items():
        if rid not in aborted:
            assert outputs[rid] == reference(prompt, audio, enc_len, max_tokens), rid


def test_cross_blocks_return_after_abort_and_preemption():
    cfg = _core.SchedulerConfig()
    cfg.num_blocks, cfg.block_size, cfg.max_model_len = 10, BLOCK_SIZE, 24
    cfg.encoder_budget = cfg.encoder_cache_size = 16
    sched, runner = _core.Scheduler(cfg), SimRunner()
    for rid in range(3):
        runner.audio[rid] = "a"
        sched.add_request(rid, [1, 2, 3], [], max_tokens=12, encoder_input=EncoderInput("a", 8))
    out = sched.schedule()
    assert sched.stats()["kv_blocks_used"] == 3 * (1 + 2)  # one decoder + two cross blocks each
    sched.update_from_output(out, runner.run(out))
    sched.finish_request(1, "abort")
    assert sched.stats()["kv_blocks_used"] == 2 * 3
    sched.check_invariants()
    while sched.has_unfinished_requests():
        out = sched.schedule()
        sched.check_invariants()
        sched.update_from_output(out, runner.run(out))
    assert sched.stats()["num_preemptions"] > 0
    assert sched.stats()["kv_blocks_free"] == cfg.num_blocks
