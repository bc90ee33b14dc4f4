"""The C API from Python through ctypes, as a Rust/Go/Zig binding would see it: plain structs,
opaque handles, status codes with messages. Needs the installed wheel's libmmcore.so (skipped
from a source checkout; tests/cpp/c_api_test.c covers every entry point in C)."""

from __future__ import annotations

import ctypes as C
from pathlib import Path

import pytest

from mmcore import cpp_package

I32, I64, P = C.c_int32, C.c_int64, C.POINTER

OK, INVALID_ARGUMENT, INVALID_HANDLE, NOT_FOUND, BAD_STATE = 0, 1, 2, 3, 4


class SchedulerConfig(C.Structure):
    _fields_ = [
        ("num_blocks", I32),
        ("block_size", I32),
        ("max_num_batched_tokens", I32),
        ("max_num_seqs", I32),
        ("max_model_len", I32),
        ("enable_prefix_caching", I32),
        ("enable_chunked_prefill", I32),
        ("encoder_budget", I32),
        ("encoder_cache_size", I64),
        ("kv_group_windows", P(I32)),
        ("num_kv_groups", I32),
    ]


class MMFeature(C.Structure):
    _fields_ = [
        ("modality", I32),
        ("identifier", C.c_char_p),
        ("offset", I32),
        ("length", I32),
        ("num_embeds", I32),
        ("embed_mask", P(C.c_uint8)),
    ]


class Request(C.Structure):
    _fields_ = [
        ("id", I64),
        ("token_ids", P(I32)),
        ("num_tokens", I32),
        ("features", P(MMFeature)),
        ("num_features", I32),
        ("max_tokens", I32),
        ("min_tokens", I32),
        ("ignore_eos", I32),
        ("eos_token_ids", P(I32)),
        ("num_eos_token_ids", I32),
        ("stop_token_ids", P(I32)),
        ("num_stop_token_ids", I32),
        ("priority", I32),
        ("cache_salt", C.c_char_p),
        ("mrope_positions", P(I64)),
        ("mrope_delta", I64),
    ]


class SchedulerOutput(C.Structure):
    _fields_ = [
        ("step_id", I64),
        ("num_reqs", I32),
        ("num_tokens", I32),
        ("max_blocks_per_req", I32),
        ("position_dims", I32),
        ("req_ids", P(I64)),
        ("num_scheduled_tokens", P(I32)),
        ("num_computed_tokens", P(I32)),
        ("seq_lens", P(I32)),
        ("query_start_loc", P(I32)),
        ("block_tables", P(I32)),
        ("prev_sample_index", P(I32)),
        ("input_ids", P(I32)),
        ("positions", P(I64)),
        ("slot_mapping", P(I64)),
        ("num_samples", I32),
        ("logits_indices", P(I32)),
        ("sampling_req_ids", P(I64)),
        ("num_encoder_items", I32),
        ("encoder_req_ids", P(I64)),
        ("encoder_item_indices", P(I32)),
        ("encoder_handles", P(I64)),
        ("num_scatter", I32),
        ("scatter_handles", P(I64)),
        ("scatter_src_offsets", P(I32)),
        ("scatter_dst_rows", P(I32)),
        ("scatter_lens", P(I32)),
        ("num_freed_encoder_handles", I32),
        ("freed_encoder_handles", P(I64)),
        ("num_finished", I32),
        ("finished_req_ids", P(I64)),
        ("num_preempted", I32),
        ("preempted_req_ids", P(I64)),
        ("num_kv_groups", I32),
        ("group_block_tables", P(I32)),
        ("group_slot_mapping", P(I64)),
    ]


class UpdateResult(C.Structure):
    _fields_ = [
        ("num_tokens", I32),
        ("req_ids", P(I64)),
        ("token_ids", P(I32)),
        ("num_finished", I32),
        ("finished_req_ids", P(I64)),
        ("finish_statuses", P(I32)),
    ]


@pytest.fixture(scope="module")
def lib():
    try:
        libdir = Path(cpp_package.get_library_dir())
    except FileNotFoundError:
        pytest.skip("mmcore is imported from a source checkout, not an installed wheel")
    lib = C.CDLL(str(libdir / "libmmcore.so"))
    lib.mmcore_last_error_message.restype = C.c_char_p
    lib.mmcore_version_string.restype = C.c_char_p
    lib.mmcore_scheduler_create.argtypes = [P(SchedulerConfig), P(C.c_void_p)]
    lib.mmcore_scheduler_update.argtypes = [C.c_void_p, I64, P(I32), I32, P(UpdateResult)]
    lib.mmcore_scheduler_finish_request.argtypes = [C.c_void_p, I64, I32]
    return lib


def _message(lib) -> str:
    return lib.mmcore_last_error_message().decode()


def test_version_matches_the_package(lib):
    import mmcore

    assert lib.mmcore_version_string().decode() == mmcore.__version__


def test_scheduler_round_trip_with_an_image_and_an_abort(lib):
    config = SchedulerConfig()
    lib.mmcore_scheduler_config_init(C.byref(config))
    config.num_blocks, config.block_size = 32, 4
    handle = C.c_void_p()
    assert lib.mmcore_scheduler_create(C.byref(config), C.byref(handle)) == OK

    tokens = (I32 * 10)(1, 2, 900, 900, 900, 900, 3, 4, 5, 6)
    feature = MMFeature(0, b"photo-1", 2, 4, 4, None)
    for rid in (1, 2):
        req = Request()
        lib.mmcore_request_init(C.byref(req))
        req.id, req.token_ids, req.num_tokens = rid, tokens, 10
        req.features, req.num_features, req.max_tokens, req.ignore_eos = C.pointer(feature), 1, 2, 1
        assert lib.mmcore_scheduler_add_request(handle, C.byref(req)) == OK
    assert lib.mmcore_scheduler_add_request(handle, C.byref(req)) == INVALID_ARGUMENT
    assert "already exists" in _message(lib)

    out = SchedulerOutput()
    assert lib.mmcore_scheduler_schedule(handle, C.byref(out)) == OK
    assert out.num_reqs == 2 and out.num_tokens == 20
    assert out.num_kv_groups == 1  # the trailing fields line up with the header
    assert [out.req_ids[i] for i in range(2)] == [1, 2]
    assert out.num_encoder_items == 1  # one identifier, encoded once for both requests
    assert out.num_scatter == 2 and out.scatter_dst_rows[1] == out.query_start_loc[1] + 2
    assert [out.input_ids[i] for i in range(4)] == [1, 2, 900, 900]

    sampled = (I32 * 2)(7, 8)
    result = UpdateResult()
    assert (
        lib.mmcore_scheduler_update(handle, out.step_id, sampled, 1, C.byref(result))
        == INVALID_ARGUMENT
    )
    assert "tokens were given" in _message(lib)
    assert lib.mmcore_scheduler_update(handle, out.step_id, sampled, 2, C.byref(result)) == OK
    assert result.num_tokens == 2 and result.token_ids[1] == 8

    assert lib.mmcore_scheduler_finish_request(handle, 2, 5) == OK  # aborted
    assert lib.mmcore_scheduler_schedule(handle, C.byref(out)) == OK
    assert out.num_reqs == 1 and out.num_finished == 1 and out.finished_req_ids[0] == 2
    assert lib.mmcore_scheduler_update(handle, out.step_id, sampled, 1, C.byref(result)) == OK
    assert result.num_finished == 1 and result.finish_statuses[0] == 4  # length
    unfinished = I32(-1)
    assert lib.mmcore_scheduler_has_unfinished(handle, C.byref(unfinished)) == OK
    assert unfinished.value == 0
    assert lib.mmcore_scheduler_check_invariants(handle) == OK

    assert lib.mmcore_scheduler_destroy(handle) == OK
    assert lib.mmcore_scheduler_schedule(handle, C.byref(out)) == INVALID_HANDLE
    assert "not a live mmcore_scheduler" in _message(lib)
    assert lib.mmcore_scheduler_schedule(None, C.byref(out)) == INVALID_HANDLE


def test_update_out_of_order_is_a_bad_state(lib):
    config = SchedulerConfig()
    lib.mmcore_scheduler_config_init(C.byref(config))
    config.num_blocks = 8
    handle = C.c_void_p()
    assert lib.mmcore_scheduler_create(C.byref(config), C.byref(handle)) == OK
    sampled = (I32 * 1)(3)
    assert lib.mmcore_scheduler_update(handle, 5, sampled, 1, None) == BAD_STATE
    assert "not the oldest step" in _message(lib)
    assert lib.mmcore_scheduler_destroy(handle) == OK
