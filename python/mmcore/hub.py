"""Where a model's files come from: a local folder, or a Hugging Face hub id through the cache.

A name that is not a local folder goes through ``huggingface_hub.snapshot_download``, which
honours the HF cache (``HF_HOME``, ``HF_HUB_CACHE``), ``revision``, ``download_dir`` and offline
mode (``HF_HUB_OFFLINE=1``: only what the cache holds). Failures become one ValueError line.
"""

from __future__ import annotations

import json
import os

# Weight formats mmcore does not read: never downloaded.
_UNREAD_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.gguf"]


def default_model_name() -> str:
    """The bundled demo checkpoint's folder, used when no model is given.

    Raises:
        ValueError: the demo checkpoint is not part of this installation.
    """
    try:
        from mmcore.demo import default_model_path

        return str(default_model_path())
    except (ImportError, FileNotFoundError) as exc:
        raise ValueError(
            f"no model given and the demo model is not available ({exc}); pass a checkpoint "
            "folder or a hub id"
        ) from None


def resolve_model_path(
    model: str | None,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    with_weights: bool = True,
) -> str:
    """The local folder holding ``model``'s files.

    Args:
        model: a checkpoint folder, a hub id (``org/name``), or None for the demo model.
        revision: branch, tag or commit of a hub id.
        download_dir: cache folder to use instead of the HF cache.
        with_weights: False skips weight files (tokenizer-only, or dummy weights).

    Returns:
        An existing folder (for a hub id, its snapshot in the cache).

    Raises:
        ValueError: one line saying why the model cannot be found.
    """
    from mmcore.demo import DEMO_MODEL_NAME

    if model is None or model == DEMO_MODEL_NAME:
        return default_model_name()
    if os.path.isdir(model):
        return model
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = download_dir or constants.HF_HUB_CACHE
    if os.path.exists(model) or model.startswith((".", "/", "~")):
        raise ValueError(f"model {model!r} is not a checkpoint folder")
    ignore = list(_UNREAD_WEIGHTS) + ([] if with_weights else ["*.safetensors"])
    try:
        return snapshot_download(
            model, revision=revision, cache_dir=download_dir, ignore_patterns=ignore
        )
    except HFValidationError:
        raise ValueError(
            f"model {model!r} is neither a local folder nor a Hugging Face hub id (org/name)"
        ) from None
    except RevisionNotFoundError:
        raise ValueError(f"model {model!r} has no revision {revision!r} on the hub") from None
    except GatedRepoError:
        raise ValueError(
            f"model {model!r} is gated on the hub: accept its terms and log in (HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"model {model!r} is not a local folder and not a hub repository you can access"
        ) from None
    except LocalEntryNotFoundError:
        rev = f" at revision {revision!r}" if revision else ""
        reason = (
            "offline mode (HF_HUB_OFFLINE=1) forbids downloading it"
            if constants.HF_HUB_OFFLINE
            else "the hub could not be reached to download it"
        )
        raise ValueError(
            f"model {model!r}{rev} is not a local folder and not in the Hugging Face cache "
            f"{where}; {reason}"
        ) from None
    except OSError as exc:  # network or disk failure during the download
        raise ValueError(f"model {model!r} could not be downloaded: {exc}") from None


def check_remote_code(model_dir: str, trust_remote_code: bool) -> None:
    """Refuse a checkpoint whose architecture only exists as remote code.

    mmcore never runs a checkpoint's own Python code: it serves model types it implements. A
    checkpoint that declares remote code (``auto_map``) for a model type transformers knows is
    read with transformers' config class and run by mmcore's implementation (if mmcore has
    one), whatever ``trust_remote_code`` says.

    Raises:
        ValueError: the model type is unknown to transformers (remote code only, or unknown),
            naming it and the model types mmcore supports.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from mmcore.multimodal.registry import supported_model_types

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:  # transformers reads the config; mmcore's registry decides
        return
    supported = supported_model_types()
    if "auto_map" in config:
        hint = (
            " (trust_remote_code=True does not change this)"
            if trust_remote_code
            else " (vLLM would ask for trust_remote_code=True; mmcore does not run remote code)"
        )
        raise ValueError(
            f"the checkpoint's model type {model_type!r} needs its own remote code, which mmcore "
            f"does not run{hint}; supported model types: {supported}"
        )
    raise ValueError(
        f"the checkpoint's model type {model_type!r} is unknown to transformers and mmcore; "
        f"supported model types: {supported}"
    )
