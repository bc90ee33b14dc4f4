"""Sliding-window layers on the CPU path never read KV blocks that lie wholly before every
query's window: poisoning those blocks with NaN leaves the output equal to the reference's on
the clean cache (the reference reads every block, so it would turn NaN)."""

import pytest
import torch

from mmcore.kernels import cpu, reference


def _step(block_size: int, window: int, num_q: list[int], lens: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d = 4, 2, 8
    blocks_per = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks_per) + 1  # block 0 stays unused and clean: what -1 entries read
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.full((len(lens), max(blocks_per)), -1, dtype=torch.int32)
    for b, n in enumerate(blocks_per):
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    key = torch.randn(num_blocks, block_size, hkv, d, generator=g)
    value = torch.randn(num_blocks, block_size, hkv, d, generator=g)
    qsl = torch.tensor([0, *torch.tensor(num_q).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(qsl[-1]), hq, d, generator=g)
    return query, key, value, tables, torch.tensor(lens, dtype=torch.int32), qsl


def _poison_out_of_window(key, value, tables, lens, num_q, window, block_size) -> int:
    """NaN into every block that ends before its request's first query's window; count them."""
    poisoned = 0
    for b, (n, q) in enumerate(zip(lens, num_q)):
        lowest_visible = n - q - window + 1  # first query sits at n - q
        for j in range(max(0, lowest_visible) // block_size):
            key[tables[b, j]] = float("nan")
            value[tables[b, j]] = float("nan")
            poisoned += 1
    return poisoned


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block_size", [2, 4])
def test_blocks_out_of_every_window_are_not_read(seed, block_size):
    window = 5
    # decode rows (one query) and prefill chunks, all far past the window
    num_q, lens = [1, 1, 6, 6, 3], [30, 23, 40, 40, 17]
    query, key, value, tables, lens_t, qsl = _step(block_size, window, num_q, lens, seed)
    expected = reference.paged_attention(query, key, value, tables, lens_t, qsl, 0.3, window)
    assert _poison_out_of_window(key, value, tables, lens, num_q, window, block_size) > 10
    got = cpu.paged_attention(query, key, value, tables, lens_t, qsl, 0.3, window)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    poisoned_reference = reference.paged_attention(
        query, key, value, tables, lens_t, qsl, 0.3, window
    )
    assert not torch.isfinite(poisoned_reference).all()  # the poison would have been seen


def _release_out_of_window(tables, lens, num_q, window, block_size) -> torch.Tensor:
    """The tables a hybrid KV cache hands the kernel: -1 for blocks wholly before the first
    query's window (released to the pool)."""
    released = tables.clone()
    for b, (n, q) in enumerate(zip(lens, num_q)):
        released[b, : max(0, n - q - window + 1) // block_size] = -1
    return released


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("window", [37, 100])
def test_cuda_kernel_never_reads_released_block_table_entries(window):
    """The kernel rounds its first key down to a 64-key tile; it must still skip the -1 entries
    of blocks before the window (a wild read otherwise), and match the reference."""
    from mmcore.kernels import ops

    block_size, hq, hkv, d = 16, 8, 2, 64
    num_q, lens = [1, 1, 40, 130, 1], [300, 177, 260, 400, 64]
    g = torch.Generator().manual_seed(0)
    blocks_per = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks_per) + 1
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = torch.full((len(lens), max(blocks_per)), -1, dtype=torch.int32)
    for b, n in enumerate(blocks_per):
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    key = torch.randn(num_blocks, block_size, hkv, d, generator=g).to("cuda", torch.bfloat16)
    value = torch.randn(num_blocks, block_size, hkv, d, generator=g).to("cuda", torch.bfloat16)
    qsl = torch.tensor([0, *torch.tensor(num_q).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(qsl[-1]), hq, d, generator=g).to("cuda", torch.bfloat16)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    expected = reference.paged_attention(
        query, key, value, tables.cuda(), lens_t.cuda(), qsl.cuda(), 0.125, window
    )
    released = _release_out_of_window(tables, lens, num_q, window, block_size)
    assert (released == -1).sum() > (tables == -1).sum()
    got = ops.paged_attention(
        query, key, value, released.cuda(), lens_t.cuda(), qsl.cuda(), 0.125, window
    )
    torch.cuda.synchronize()
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
