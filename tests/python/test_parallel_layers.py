"""Tensor-parallel layers rank by rank, without processes: each rank's shard is loaded from
the full weights and the collectives are done by hand (concatenate / sum the ranks' outputs);
the result must equal the unsharded layer. Covers uneven vocabularies (padding) and KV heads
fewer than ranks (replication)."""

from __future__ import annotations

import pytest
import torch

from mmcore.distributed import parallel_state
from mmcore.layers import linear, vocab_embedding
from mmcore.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from mmcore.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from mmcore.models.weights import load_named_weights

F32 = dict(dtype=torch.float32, device="cpu")


def _as_rank(monkeypatch, rank: int, size: int) -> None:
    state = parallel_state.TensorParallelState(rank=rank, world_size=size)
    monkeypatch.setattr(parallel_state, "_STATE", state)
    monkeypatch.setattr(vocab_embedding, "all_reduce", lambda t: t)  # summed by the test
    monkeypatch.setattr(linear, "all_reduce", lambda t: t)


def _load(module, weights: dict) -> None:
    load_named_weights(module, weights.items(), lambda name: name)


def _shards(monkeypatch, size, build, weights):
    modules = []
    for rank in range(size):
        _as_rank(monkeypatch, rank, size)
        module = build()
        _load(module, weights)
        modules.append(module)
    return modules


@pytest.mark.parametrize("size", [2, 4])
def test_qkv_column_row_shards_rebuild_the_full_block(monkeypatch, size):
    torch.manual_seed(0)
    hidden, head_dim, heads, kv_heads = 32, 8, 4, 2  # size 4: each KV head on 2 ranks
    w = {
        "q_proj.weight": torch.randn(heads * head_dim, hidden),
        "k_proj.weight": torch.randn(kv_heads * head_dim, hidden),
        "v_proj.weight": torch.randn(kv_heads * head_dim, hidden),
        "q_proj.bias": torch.randn(heads * head_dim),
        "k_proj.bias": torch.randn(kv_heads * head_dim),
        "v_proj.bias": torch.randn(kv_heads * head_dim),
    }

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj = QKVParallelLinear(hidden, head_dim, heads, kv_heads, bias=True, **F32)

    x = torch.randn(5, hidden)
    blocks = _shards(monkeypatch, size, Block, w)
    group = heads // kv_heads
    for rank, block in enumerate(blocks):
        proj = block.qkv_proj
        assert (proj.num_local_heads, proj.num_local_kv_heads) == (heads // size, 1)
        q, k, v = proj(x).split(proj.shard_sizes, dim=-1)
        for j in range(proj.num_local_heads):
            head = rank * proj.num_local_heads + j
            rows = slice(head * head_dim, (head + 1) * head_dim)
            expect_q = x @ w["q_proj.weight"][rows].T + w["q_proj.bias"][rows]
            torch.testing.assert_close(q[:, j * head_dim : (j + 1) * head_dim], expect_q)
            # the KV head this query head reads (GQA) is on the same rank
            kv_rows = slice((head // group) * head_dim, (head // group + 1) * head_dim)
            torch.testing.assert_close(
                k, x @ w["k_proj.weight"][kv_rows].T + w["k_proj.bias"][kv_rows]
            )
            torch.testing.assert_close(
                v, x @ w["v_proj.weight"][kv_rows].T + w["v_proj.bias"][kv_rows]
            )


def test_mlp_column_then_row_sums_to_the_full_mlp(monkeypatch):
    torch.manual_seed(1)
    h, i = 16, 24
    w = {
        "gate_proj.weight": torch.randn(i, h),
        "up_proj.weight": torch.randn(i, h),
        "down_proj.weight": torch.randn(h, i),
        "down_proj.bias": torch.randn(h),
        "fc1.weight": torch.randn(i, h),
        "fc1.bias": torch.randn(i),
    }

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = MergedColumnParallelLinear(
                h, {"gate_proj": i, "up_proj": i}, bias=False, **F32
            )
            self.down_proj = RowParallelLinear(i, h, bias=True, **F32)
            self.fc1 = ColumnParallelLinear(h, i, bias=True, **F32)

    x = torch.randn(3, h)
    gate = x @ w["gate_proj.weight"].T
    up = x @ w["up_proj.weight"].T
    full = (torch.relu(gate) * up) @ w["down_proj.weight"].T + w["down_proj.bias"]
    mlps = _shards(monkeypatch, 2, MLP, w)
    total = sum(
        m.down_proj(torch.relu(m.gate_up_proj(x)[:, : i // 2]) * m.gate_up_proj(x)[:, i // 2 :])
        for m in mlps
    )
    torch.testing.assert_close(total, full)
    fc1 = torch.cat([m.fc1(x) for m in mlps], dim=-1)
    torch.testing.assert_close(fc1, x @ w["fc1.weight"].T + w["fc1.bias"])


@pytest.mark.parametrize("vocab", [7, 8])
def test_vocab_parallel_embedding_and_head_with_padding(monkeypatch, vocab):
    torch.manual_seed(2)
    hidden, size = 4, 2
    table = torch.randn(vocab, hidden)

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = VocabParallelEmbedding(vocab, hidden, **F32)
            self.head = ParallelLMHead(vocab, hidden, **F32)

    lms = _shards(monkeypatch, size, LM, {"embed.weight": table, "head.weight": table})
    ids = torch.arange(vocab).flip(0)
    torch.testing.assert_close(sum(m.embed(ids) for m in lms), table[ids])
    x = torch.randn(3, hidden)
    local = [torch.nn.functional.linear(x, m.head.weight) for m in lms]
    assert all(t.shape[-1] == -(-vocab // size) for t in local)  # padded to equal shards
    torch.testing.assert_close(torch.cat(local, dim=-1)[:, :vocab], x @ table.T)


def test_head_counts_that_do_not_split_are_refused(monkeypatch):
    _as_rank(monkeypatch, 0, 4)
    with pytest.raises(ValueError, match="num_attention_heads"):
        QKVParallelLinear(32, 8, 6, 2, bias=False, **F32)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        QKVParallelLinear(32, 8, 12, 3, bias=False, **F32)


@pytest.mark.parametrize("size", [2, 4])
def test_stacked_qkv_shards_keep_each_ranks_heads_of_q_k_and_v(monkeypatch, size):
    """One checkpoint tensor with all q, then all k, then all v rows (vision towers' ``qkv``):
    rank r keeps its heads of each third, in q, k, v order."""
    torch.manual_seed(0)
    hidden, heads, head_dim = 16, 4, 4
    w = {"qkv.weight": torch.randn(3 * heads * head_dim, hidden), "qkv.bias": torch.randn(48)}

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = linear.StackedQKVParallelLinear(hidden, heads, head_dim, bias=True, **F32)

    x = torch.randn(5, hidden)
    full = torch.nn.functional.linear(x, w["qkv.weight"], w["qkv.bias"]).view(5, 3, heads, -1)
    for rank, block in enumerate(_shards(monkeypatch, size, Block, w)):
        local = heads // size
        assert block.qkv.num_local_heads == local
        got = block.qkv(x).view(5, 3, local, head_dim)
        torch.testing.assert_close(got, full[:, :, rank * local : (rank + 1) * local])
