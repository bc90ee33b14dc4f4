"""EngineArgs / ServerArgs: one declaration per option builds the CLI and validates Python calls;
``mmcore serve`` takes ``vllm serve`` command lines."""

from __future__ import annotations

import dataclasses
import os
import shlex

import pytest
import torch

from mmcore.arg_utils import flag_name, options_table
from mmcore.cli import build_parser
from mmcore.commands import serve_engine_args
from mmcore.engine_args import EngineArgs
from mmcore.server_args import ServerArgs

# What a vLLM user types (vLLM's own flag spellings), with the values EngineArgs must hold.
VLLM_SERVE = (
    "serve llava-hf/llava-1.5-7b-hf --dtype half --max-model-len 4096 "
    "--gpu-memory-utilization 0.85 --limit-mm-per-prompt '{\"image\": 2}' "
    "--mm-processor-kwargs '{\"do_center_crop\": true}' --trust-remote-code --enforce-eager "
    "--no-enable-prefix-caching --served-model-name llava my-llava --chat-template tpl.jinja "
    "--generation-config vllm --seed 3 --disable-log-stats --tensor-parallel-size 1 "
    "--kv-cache-memory-bytes 1000000 --tokenizer llava-hf/llava-1.5-7b-hf --revision main "
    "--download-dir /models --max-num-seqs 8 --max-num-batched-tokens 2048 --block-size 32 "
    "--enable-chunked-prefill --async-scheduling --load-format safetensors "
    "--allowed-local-media-path /data --host 0.0.0.0 --port 9000 --api-key secret "
    "--uvicorn-log-level warning"
)
VLLM_SERVE_EXPECTED = {
    "model": "llava-hf/llava-1.5-7b-hf",
    "dtype": "float16",
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.85,
    "limit_mm_per_prompt": {"image": 2},
    "mm_processor_kwargs": {"do_center_crop": True},
    "trust_remote_code": True,
    "enforce_eager": True,
    "enable_prefix_caching": False,
    "served_model_name": ["llava", "my-llava"],
    "chat_template": "tpl.jinja",
    "generation_config": "vllm",
    "seed": 3,
    "disable_log_stats": True,
    "tensor_parallel_size": 1,
    "kv_cache_memory_bytes": 1000000,
    "tokenizer": "llava-hf/llava-1.5-7b-hf",
    "revision": "main",
    "download_dir": "/models",
    "max_num_seqs": 8,
    "max_num_batched_tokens": 2048,
    "block_size": 32,
    "enable_chunked_prefill": True,
    "async_scheduling": True,
    "load_format": "safetensors",
    "allowed_local_media_path": "/data",
}


def _parse(command: str):
    return build_parser().parse_args(shlex.split(command))


def test_vllm_serve_command_line_is_accepted():
    args = _parse(VLLM_SERVE)
    engine_args = serve_engine_args(args)
    for name, value in VLLM_SERVE_EXPECTED.items():
        assert getattr(engine_args, name) == value, name
    server_args = ServerArgs.from_cli_args(args)
    assert (server_args.host, server_args.port, server_args.api_key) == ("0.0.0.0", 9000, "secret")
    assert server_args.uvicorn_log_level == "warning"


def test_serve_model_positional_and_flag_are_the_same():
    by_tag = serve_engine_args(_parse("serve org/model --dtype bfloat16"))
    by_flag = serve_engine_args(_parse("serve --model org/model --dtype bfloat16"))
    assert by_tag == by_flag and by_tag.model == "org/model"
    with pytest.raises(SystemExit, match="given twice"):
        serve_engine_args(_parse("serve org/a --model org/b"))


@pytest.mark.parametrize("text, expected", [("2048", 2048), ("32k", 32000), ("32K", 32768)])
def test_lengths_read_like_vllm(text, expected):
    assert serve_engine_args(_parse(f"serve --max-model-len {text}")).max_model_len == expected


def test_unset_flags_keep_the_dataclass_defaults():
    assert serve_engine_args(_parse("serve")) == EngineArgs()
    assert ServerArgs.from_cli_args(_parse("serve")) == ServerArgs()


@pytest.mark.parametrize(
    "command, fragment",
    [
        ("serve --dtype fp7", "dtype must be one of"),
        ("serve --limit-mm-per-prompt '{\"image\": -1}'", "limit_mm_per_prompt"),
        ("serve --limit-mm-per-prompt image", "limit_mm_per_prompt"),
        ("serve --mm-processor-kwargs '[1]'", "mm_processor_kwargs must be a JSON object"),
        ("serve --max-model-len lots", "max_model_len must be an integer, got 'lots'"),
        ("serve --max-model-len 1.5", "max_model_len must be an integer"),
        ("serve --max-model-len 1.0001k", "max_model_len must be a whole number"),
        ("serve --gpu-memory-utilization most", "gpu_memory_utilization must be a number"),
        ("serve --uvicorn-log-level loud", "invalid choice"),
    ],
)
def test_bad_flag_values_exit_with_a_usage_line(command, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(command)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_values_argparse_cannot_check_exit_with_one_line():
    with pytest.raises(SystemExit, match=r"^error: distributed_executor_backend='uni' runs one"):
        serve_engine_args(
            _parse("serve --tensor-parallel-size 2 --distributed-executor-backend uni")
        )
    with pytest.raises(SystemExit, match=r"^error: gpu_memory_utilization must be in"):
        serve_engine_args(_parse("serve --gpu-memory-utilization 1.5"))


def test_help_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{auto,half,float16,bfloat16,float,float32}" in text
    assert "--no-enable-prefix-caching" in text
    assert "(default: 0.9)" in text and "(default: 8000)" in text and "(default: on)" in text
    for command in (["generate", "x", "--help"], ["bench", "offline", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(command)
        text = " ".join(capsys.readouterr().out.split())
        assert "--kv-cache-memory-bytes" in text and "(default: 256)" in text


def test_every_option_has_one_flag_and_help():
    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    server_fields = {f.name for f in dataclasses.fields(ServerArgs)}
    assert not engine_fields & server_fields  # no option in both
    for cls in (EngineArgs, ServerArgs):
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f.name
    flags = [flag_name(name) for name in engine_fields | server_fields]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize(
    "value, expected",
    [("half", "float16"), ("float", "float32"), (torch.bfloat16, "bfloat16"), ("auto", "auto")],
)
def test_dtype_names(value, expected):
    assert EngineArgs(dtype=value).dtype == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ('{"image": 2}', {"image": 2}),
        ("image=2,video=1", {"image": 2, "video": 1}),
        ({"image": 0}, {"image": 0}),
    ],
)
def test_limit_mm_per_prompt_forms(value, expected):
    assert EngineArgs(limit_mm_per_prompt=value).limit_mm_per_prompt == expected


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_num_seqs": "8"}, "max_num_seqs must be an integer"),
        ({"enforce_eager": 1}, "enforce_eager must be True or False"),
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"load_format": "pt"}, "load_format must be one of"),
        ({"device": "tpu"}, "device must be"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"limit_mm_per_prompt": {"image": "2"}}, r"limit_mm_per_prompt\['image'\]"),
        ({"mm_processor_kwargs": "{oops"}, "mm_processor_kwargs must be a JSON object"),
        ({"served_model_name": [""]}, "served_model_name"),
        ({"model": 7}, "model: expected a path or hub id string"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
        (
            {"tensor_parallel_size": 2, "distributed_executor_backend": "uni"},
            "distributed_executor_backend='uni' runs one rank only",
        ),
        ({"mm_encoder_tp_mode": "pixels"}, "mm_encoder_tp_mode must be one of"),
        ({"distributed_executor_backend": "nccl"}, "distributed_executor_backend must be"),
    ],
)
def test_bad_python_values_are_value_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        EngineArgs.from_kwargs(**kwargs)


def test_unknown_argument_is_named_with_the_closest_option():
    with pytest.raises(
        TypeError, match="'kv_cache_memory' \\(did you mean 'kv_cache_memory_bytes'"
    ):
        EngineArgs.from_kwargs(kv_cache_memory=1 << 20)
    with pytest.raises(TypeError, match="'bogus'"):
        ServerArgs.from_kwargs(bogus=1)


def test_paths_may_be_pathlib(tmp_path):
    args = EngineArgs(model=tmp_path, chat_template=tmp_path / "t.jinja")
    assert args.model == str(tmp_path) and args.chat_template == str(tmp_path / "t.jinja")


def test_values_that_run_today_are_accepted():
    args = EngineArgs.from_kwargs(
        tensor_parallel_size=1,
        distributed_executor_backend="uni",
        served_model_name="one-name",
        gpu_memory_utilization=1,
    )
    assert args.served_model_name == ["one-name"] and args.gpu_memory_utilization == 1.0


def test_options_table_lists_every_option():
    table = options_table(EngineArgs)
    for f in dataclasses.fields(EngineArgs):
        assert f"`{flag_name(f.name)}`" in table
    assert "`--no-enable-prefix-caching`" in table


def test_docs_page_is_generated_from_the_options():
    from mmcore.options_doc import render

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "engine_args.md")) as f:
        assert f.read() == render(), (
            "regenerate: python -m mmcore.options_doc > docs/engine_args.md"
        )


def test_served_model_names_and_media_reach_the_server_config():
    from mmcore.commands import server_config

    args = _parse(
        "serve org/model --served-model-name a b --allowed-local-media-path /data "
        "--limit-mm-per-prompt image=3 --allowed-media-domains img.example --port 0"
    )
    config = server_config(serve_engine_args(args), ServerArgs.from_cli_args(args), "/cache/x")
    assert config.model_names == ["a", "b"] and config.port == 0
    assert config.media.allowed_local_media_path == "/data" and config.media.max_images == 3
    assert config.media.allowed_domains == ["img.example"]
    unnamed = server_config(EngineArgs(model="org/model"), ServerArgs(), "/cache/x")
    assert unnamed.model_names == ["org/model"]
    assert server_config(EngineArgs(), ServerArgs(), "/demo").model_names == ["mmcore-demo"]
