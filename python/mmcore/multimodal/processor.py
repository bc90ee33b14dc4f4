"""Base class of the per-model multimodal processors (contract: /work/notes/model_api.md).

A processor turns user media into what the core and the model need, in two separate steps:
``num_embeds`` from an item's size alone (the core expands placeholders and schedules with it
before any pixel is touched), then ``process`` for the tensors the model's ``encode`` takes.
"""

from __future__ import annotations

from typing import Any

_MODALITY_NAMES = ("image", "video", "audio")


def image_size(item: Any) -> tuple[int, int]:
    """(height, width) of a PIL image, an ``HxWxC``/``HxW`` numpy array or a ``CxHxW`` tensor.

    Raises:
        TypeError: for anything else.
    """
    from PIL import Image

    if isinstance(item, Image.Image):  # size is (width, height)
        width, height = item.size
        return int(height), int(width)
    shape = getattr(item, "shape", None)
    if shape is None:
        raise TypeError(f"cannot read an image size from {type(item).__name__}")
    if type(item).__module__.startswith("torch"):
        if len(shape) < 2:
            raise TypeError(f"image tensor must be [C, H, W], got shape {tuple(shape)}")
        return int(shape[-2]), int(shape[-1])
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        return int(shape[0]), int(shape[1])
    if len(shape) == 3:
        return int(shape[1]), int(shape[2])
    raise TypeError(f"image array must be [H, W], [H, W, C] or [C, H, W], got {tuple(shape)}")


def modality_enum(modality: str):
    """``"image"`` -> ``mmcore._core.Modality.IMAGE`` (and video, audio)."""
    from mmcore import _core

    if modality not in _MODALITY_NAMES:
        raise ValueError(f"unknown modality {modality!r}; known: {list(_MODALITY_NAMES)}")
    return getattr(_core.Modality, modality.upper())


class MultiModalProcessor:
    """Per-model media processing. Subclasses set ``supported_modalities`` and implement
    ``placeholder_token_id``, ``num_embeds``, ``process`` and ``dummy_items``. Used as is, it
    serves text-only models: every modality is rejected with a ValueError.

    Args:
        model_dir: the checkpoint folder (HF processor files live there).
        hf_config: the model's transformers config.
        tokenizer: the model's tokenizer.
        mm_processor_kwargs: overrides for the HF processor's settings.
    """

    supported_modalities: tuple[str, ...] = ()

    def __init__(
        self, model_dir: str, hf_config, tokenizer, mm_processor_kwargs: dict | None = None
    ):
        self.model_dir = str(model_dir)
        self.hf_config = hf_config
        self.tokenizer = tokenizer
        self.mm_processor_kwargs = dict(mm_processor_kwargs or {})

    def check_modality(self, modality: str) -> None:
        """Raise ValueError for a modality the model does not accept."""
        if modality not in self.supported_modalities:
            raise ValueError(
                f"model {self.hf_config.model_type!r} does not accept {modality} input"
            )

    def placeholder_token_id(self, modality: str) -> int:
        """Token id of the one placeholder per item in prompts (e.g. the ``<image>`` id)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.placeholder_token_id")

    def placeholder_text(self, modality: str) -> str:
        """The placeholder as text, e.g. ``"<image>"``."""
        return self.tokenizer.convert_ids_to_tokens(self.placeholder_token_id(modality))

    def num_embeds(self, modality: str, item: Any) -> int:
        """Embeddings the model's ``encode`` returns for ``item``, from its size alone."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.num_embeds")

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings for an item already processed by the user (e.g. ``pixel_values``)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.num_embeds_processed")

    def process(self, modality: str, items: list) -> list[dict]:
        """Tensors per item for the model's ``encode`` (one batched call for all items)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.process")

    def dummy_items(self, modality: str, count: int) -> list:
        """``count`` items of the size with the most embeddings (memory profiling)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.dummy_items")

    def placeholder_item(self, modality: str, identifier: str, num_embeds: int):
        """The core's description of one item: ``num_embeds`` copies of the placeholder token.

        Returns:
            ``mmcore._core.PlaceholderItem``.
        """
        from mmcore import _core

        return _core.PlaceholderItem(
            modality_enum(modality), identifier, self.placeholder_token_id(modality), num_embeds
        )

    @property
    def embeds_hidden_size(self) -> int:
        """Width of precomputed ``image_embeds`` a user may pass instead of media."""
        return int(self.hf_config.get_text_config().hidden_size)
