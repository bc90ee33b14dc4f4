"""Pieces of the multiprocess executor without worker processes: the shared-memory broadcast
ring, the step codec, and the checkpoint digest the ranks compare at start-up."""

from __future__ import annotations

import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, Qwen2AudioConfig, Qwen2AudioEncoderConfig, WhisperConfig

from mmcore import Engine
from mmcore.executor.base import ParallelConfig, check_shardable
from mmcore.executor.model_setup import KVSizing, ModelSpec
from mmcore.executor.shm_queue import ShmBroadcastQueue
from mmcore.executor.step_codec import KIND_CONTROL, KIND_STEP, decode, encode_control, encode_step
from mmcore.executor.worker import checkpoint_fingerprint


def test_every_reader_gets_every_message_in_order_across_chunks_and_wraps():
    writer = ShmBroadcastQueue(2, num_slots=3, slot_bytes=64)
    readers = [ShmBroadcastQueue(**writer.handle(), reader=i) for i in range(2)]
    rng = np.random.default_rng(0)
    messages = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 5, 64, 200, 1, 130)]
    messages *= 3  # more messages than slots: the ring wraps while readers lag
    got = {0: [], 1: []}

    def read(i):
        got[i] = [bytes(readers[i].get()) for _ in messages]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for m in messages:
        writer.put([m[:3], np.frombuffer(m[3:], np.uint8)])
    for t in threads:
        t.join(30)
    assert got[0] == messages and got[1] == messages
    for r in readers:
        r.close()
    writer.close()


def test_step_and_control_messages_round_trip():
    step = SimpleNamespace(
        num_reqs=2,
        num_tokens=5,
        step_id=7,
        input_ids=np.array([1, -1, 3, 4, 5], dtype=np.int32),
        block_tables=np.arange(6, dtype=np.int32).reshape(2, 3),
        slot_mapping=np.arange(5, dtype=np.int64),
        freed_encoder_handles=np.zeros(0, dtype=np.int64),
    )
    parts = encode_step(step, {"removed_req_ids": np.array([9], dtype=np.int64)})
    kind, out = decode(bytearray(b"".join(bytes(memoryview(p)) for p in parts)))
    assert kind == KIND_STEP
    assert (out.num_reqs, out.num_tokens, out.step_id) == (2, 5, 7)
    for name in ("input_ids", "block_tables", "slot_mapping", "freed_encoder_handles"):
        np.testing.assert_array_equal(getattr(out, name), getattr(step, name))
        assert getattr(out, name).dtype == getattr(step, name).dtype
    assert out.removed_req_ids.tolist() == [9]
    out.input_ids[1] = 2  # writable: the runner fills unknown ids in place
    control = b"".join(bytes(memoryview(p)) for p in encode_control(("add", [1])))
    kind, message = decode(bytearray(control))
    assert (kind, message) == (KIND_CONTROL, ("add", [1]))


def test_checkpoint_digest_changes_with_the_config_and_weights(tiny_llava_dir, tmp_path):
    copy = shutil.copytree(tiny_llava_dir, tmp_path / "copy")
    spec = ModelSpec(str(copy), torch.float32, "auto", 0, None)
    sizing = KVSizing(16, None, 0.9, 256, 8, 512, 256)
    digest = checkpoint_fingerprint(spec, sizing, 2)
    assert checkpoint_fingerprint(spec, sizing, 2) == digest
    assert checkpoint_fingerprint(spec, sizing, 4) != digest
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e-06'))
    assert checkpoint_fingerprint(spec, sizing, 2) != digest


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
        ({"tensor_parallel_size": 2, "distributed_executor_backend": "uni"}, "one rank only"),
        ({"distributed_executor_backend": "threads"}, "distributed_executor_backend must be"),
        ({"mm_encoder_tp_mode": "pipeline"}, "mm_encoder_tp_mode must be"),
        ({"tensor_parallel_size": 3}, r"num_attention_heads \(4\) is not divisible"),
        ({"tensor_parallel_size": 8}, "num_attention_heads"),
    ],
)
def test_bad_parallel_options_are_refused_before_any_worker_starts(
    tiny_llava_dir, options, message
):
    with pytest.raises(ValueError, match=message):
        Engine(tiny_llava_dir, **options)


@pytest.mark.parametrize(
    ("config", "model_impl", "message"),
    [
        (WhisperConfig(), "auto", "'whisper' is not built from tensor-parallel layers"),
        (LlamaConfig(), "transformers", "Transformers backend .* tensor_parallel_size > 1"),
    ],
)
def test_models_without_parallel_layers_are_refused(config, model_impl, message):
    with pytest.raises(ValueError, match=message):
        check_shardable(config, ParallelConfig(tensor_parallel_size=2), model_impl=model_impl)
    check_shardable(config, ParallelConfig(tensor_parallel_size=1), model_impl=model_impl)


def test_audio_encoder_heads_must_divide_unless_data_parallel():
    config = Qwen2AudioConfig(audio_config=Qwen2AudioEncoderConfig(encoder_attention_heads=5))
    with pytest.raises(ValueError, match="audio encoder's 5 heads .* mm_encoder_tp_mode='data'"):
        check_shardable(config, ParallelConfig(tensor_parallel_size=2), model_impl="auto")
    data = ParallelConfig(tensor_parallel_size=2, mm_encoder_tp_mode="data")
    check_shardable(config, data, model_impl="auto")
    check_shardable(Qwen2AudioConfig(), ParallelConfig(tensor_parallel_size=2), model_impl="auto")
