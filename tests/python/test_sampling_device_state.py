"""Sampler building blocks without a model: the grammar bitmask against xgrammar's own apply,
the compiler (vocabulary padding, cache, choice escaping), device counts, penalties, bad words."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xgrammar as xgr

from mmcore.sampling.host_masks import HostMasks, apply_token_bitmask, bad_word_bans
from mmcore.sampling.penalties import apply_penalties
from mmcore.sampling.request_state import DeviceCounts
from mmcore.sampling_params import StructuredOutputsParams
from mmcore.structured_outputs import GrammarCompiler
from mmcore.testing.tiny_checkpoints import build_tokenizer


def _to_device(_name, array, dtype):
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("vocab", [64, 100, 353])
def test_bitmask_matches_xgrammar_apply(vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g)
    words = torch.randint(-(2**31), 2**31 - 1, (3, -(-vocab // 32)), generator=g, dtype=torch.int64)
    bitmask = words.to(torch.int32)
    rows = np.array([0, 2, 4])
    expected = logits.clone()
    full = torch.full((5, bitmask.shape[1]), -1, dtype=torch.int32)
    full[torch.from_numpy(rows)] = bitmask
    xgr.apply_token_bitmask_inplace(expected, full, vocab_size=vocab)
    got = logits.clone()
    apply_token_bitmask(got, HostMasks(bitmask_rows=rows, bitmask=bitmask), _to_device)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got, expected)


def test_padded_vocabulary_rows_are_never_allowed(tokenizer):
    vocab = len(tokenizer) + 45  # embedding rows beyond the tokenizer's, as checkpoints pad
    compiler = GrammarCompiler(tokenizer, vocab, [tokenizer.eos_token_id])
    compiled = compiler.compile(StructuredOutputsParams(json_object=True))
    matcher = compiler.new_matcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    assert bitmask.shape == (1, -(-vocab // 32))
    for text in ("", '{"a'):
        assert matcher.accept_string(text) if text else True
        matcher.fill_next_token_bitmask(bitmask)
        logits = torch.zeros(1, vocab)
        apply_token_bitmask(logits, HostMasks(np.array([0]), bitmask), _to_device)
        allowed = torch.isfinite(logits[0]).nonzero().flatten()
        assert len(allowed) > 0 and int(allowed.max()) < len(tokenizer)


def test_compiled_once_per_distinct_constraint(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    first = compiler.compile(StructuredOutputsParams(json=schema))
    assert compiler.compile(StructuredOutputsParams(json=dict(schema))) is first
    assert compiler.compile(StructuredOutputsParams(json=json.dumps(schema))) is not None
    compiler.compile(StructuredOutputsParams(json=schema, disable_any_whitespace=True))
    assert compiler.num_compiled == 3  # dict and string forms differ textually; whitespace too


def test_choice_accepts_exactly_the_choices(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    choices = ['say "hi"', "back\\slash", "ünï 🙂", "new\nline"]
    compiled = compiler.compile(StructuredOutputsParams(choice=choices))
    for choice in choices:
        matcher = compiler.new_matcher(compiled)
        assert matcher.accept_string(choice)
        assert matcher.is_completed()
    matcher = compiler.new_matcher(compiled)
    assert not matcher.accept_string("say hi")


def test_counts_grow_and_reused_slots_start_at_zero():
    counts = DeviceCounts(vocab_size=10, device=torch.device("cpu"), initial_slots=2)
    slots = [counts.allocate(np.array([1, 2]), with_prompt=True) for _ in range(3)]
    assert counts.num_slots == 4 and len(set(slots)) == 3
    counts.record(torch.tensor(slots + [slots[0]]), torch.tensor([3, 4, 5, 3]))
    assert counts.output_counts[slots[0], 3] == 2 and counts.num_generated[slots[0]] == 2
    assert counts.prompt_mask[slots[1]].nonzero().flatten().tolist() == [1, 2]
    counts.free(slots[0])
    reused = counts.allocate(np.array([7]), with_prompt=False)
    assert reused == slots[0]
    assert counts.output_counts[reused].sum() == 0 and counts.num_generated[reused] == 0
    assert not counts.prompt_mask[reused].any()


def test_penalties_follow_their_definitions_row_by_row():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, generator=g) * 4
    output_counts = torch.randint(0, 3, (3, 12), generator=g, dtype=torch.int32)
    prompt_mask = torch.rand(3, 12, generator=g) < 0.3
    rep, freq, pres = (
        torch.tensor([1.5, 1.0, 0.7]),
        torch.tensor([0.5, -1.0, 0.0]),
        torch.tensor([1.0, 0.2, -2.0]),
    )
    got = apply_penalties(logits, output_counts, prompt_mask, rep, freq, pres)
    for r in range(3):
        for t in range(12):
            value = logits[r, t].item()
            count = output_counts[r, t].item()
            if count > 0 or prompt_mask[r, t]:
                value = value / rep[r].item() if value > 0 else value * rep[r].item()
            value -= count * freq[r].item() + (count > 0) * pres[r].item()
            assert got[r, t].item() == pytest.approx(value, rel=1e-5, abs=1e-5)


def test_multi_token_bad_words_ban_their_last_token_after_the_prefix():
    rows, ids = bad_word_bans(
        [
            (0, [([5, 6], 7)], [1, 5, 6]),  # prefix just generated: ban 7
            (1, [([5, 6], 7)], [5, 6, 1]),  # not at the end: no ban
            (2, [([9], 3), ([1], 4)], [1]),  # one of two words matches
        ]
    )
    assert list(zip(rows.tolist(), ids.tolist())) == [(0, 7), (2, 4)]
