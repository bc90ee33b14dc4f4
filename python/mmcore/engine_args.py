"""Engine options shared by the ``mmcore`` commands that build an Engine."""

from __future__ import annotations

import argparse
from typing import Any


def parse_limit_mm(value: str) -> dict[str, int]:
    """``"image=4,video=1"`` -> ``{"image": 4, "video": 1}``."""
    limits = {}
    for item in value.split(","):
        modality, _, count = item.partition("=")
        if not modality or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected MODALITY=COUNT[,MODALITY=COUNT], got {value!r}"
            )
        limits[modality.strip()] = int(count)
    return limits


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add the Engine constructor options to ``parser``."""
    g = parser.add_argument_group("engine")
    g.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--max-model-len", type=int, help="longest prompt + output in tokens")
    g.add_argument("--max-num-seqs", type=int, help="most requests in one step")
    g.add_argument("--max-num-batched-tokens", type=int, help="most tokens in one step")
    g.add_argument("--block-size", type=int, help="tokens per KV cache block")
    g.add_argument("--kv-cache-memory", type=int, help="bytes for the KV cache")
    g.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory to use")
    g.add_argument(
        "--no-prefix-caching", action="store_true", help="do not reuse KV blocks across requests"
    )
    g.add_argument("--no-chunked-prefill", action="store_true", help="never split prompts")
    g.add_argument(
        "--no-async-scheduling",
        action="store_true",
        help="do not overlap scheduling with the GPU step (overlap is the CUDA default)",
    )
    g.add_argument(
        "--limit-mm-per-prompt",
        type=parse_limit_mm,
        help="most items per modality in one prompt, e.g. image=4",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of unseeded sampling")
    g.add_argument(
        "--load-format", default="auto", help="auto, safetensors or dummy (random weights)"
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Engine keyword arguments given on the command line (unset ones are left out)."""
    kwargs: dict[str, Any] = {
        "dtype": args.dtype,
        "device": args.device,
        "seed": args.seed,
        "load_format": args.load_format,
        "enable_prefix_caching": not args.no_prefix_caching,
        "enable_chunked_prefill": not args.no_chunked_prefill,
    }
    if args.no_async_scheduling:
        kwargs["async_scheduling"] = False
    for name in (
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "block_size",
        "kv_cache_memory",
        "gpu_memory_utilization",
        "limit_mm_per_prompt",
    ):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def resolve_model(model: str | None) -> str:
    """The model folder to use: the one given, or the demo model's for none or "mmcore-demo".

    Raises:
        SystemExit: no model was given and ``mmcore.demo`` is not available.
    """
    from mmcore.demo import DEMO_MODEL_NAME

    if model and model != DEMO_MODEL_NAME:
        return model
    try:
        from mmcore.demo import default_model_path

        return str(default_model_path())
    except (ImportError, FileNotFoundError) as exc:
        raise SystemExit(
            f"no model given and the demo model is not available ({exc}); pass a checkpoint folder"
        ) from exc
