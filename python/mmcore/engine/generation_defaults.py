"""Sampling defaults from a checkpoint's ``generation_config.json`` (vLLM's ``generation_config``).

``"auto"`` reads the model folder's file, a folder path reads that folder's, ``"vllm"`` reads
none. The values become the defaults of :class:`~mmcore.SamplingParams` the engine uses when a
request leaves them unset (``Engine.get_default_sampling_params``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# generation_config.json key -> SamplingParams field (vLLM's set).
_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def sampling_defaults(generation_config: str, model_path: str) -> dict[str, Any]:
    """The SamplingParams fields that ``generation_config`` sets.

    Args:
        generation_config: ``"auto"``, ``"vllm"`` or a folder holding ``generation_config.json``.
        model_path: the checkpoint folder (read with ``"auto"``).

    Returns:
        ``{field: value}`` for the fields the file sets and SamplingParams has.

    Raises:
        ValueError: a folder without ``generation_config.json``, or an unreadable file.
    """
    from mmcore.sampling_params import SamplingParams

    if generation_config == "vllm":
        return {}
    folder = model_path if generation_config == "auto" else generation_config
    path = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(path):
        if generation_config == "auto":
            return {}
        raise ValueError(
            f"generation_config must be auto, vllm or a folder holding generation_config.json; "
            f"{generation_config!r} is not"
        )
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    defaults = {
        name: config[key]
        for key, name in _KEYS.items()
        if config.get(key) is not None and name in known
    }
    SamplingParams(**defaults)  # a bad value fails here, at start-up, naming the field
    return defaults
