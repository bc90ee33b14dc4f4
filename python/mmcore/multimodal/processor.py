"""The processor contract: what a model family's multimodal processor offers the engine.

A processor turns user media into what the core and the model need, in separate steps:

1. :meth:`MultiModalProcessor.load_media` decodes one raw item of a modality (the loader is
   chosen per modality: images, videos, audio clips);
2. :meth:`~MultiModalProcessor.num_embeds` counts its embeddings from its size alone (the core
   expands placeholders and schedules with it before any pixel is touched);
3. :meth:`~MultiModalProcessor.process` makes the tensors the model's ``encode`` takes;
4. for M-RoPE models, :meth:`~MultiModalProcessor.mrope_positions` lays out the expanded
   prompt's 3-row positions.

``mm_processor_kwargs`` (at construction and per request) may only name keys listed in
``processor_kwargs``; anything else is refused. The guide is ``docs/adding_a_model.md``; the
model side of the contract is :mod:`mmcore.models.interfaces`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class MediaOptions:
    """Where media may come from and how large it may be (the engine's and server's policy).

    Attributes:
        allowed_local_media_path: folder local files must lie in (None: no local files).
        allowed_domains: hosts http(s) URLs may be fetched from (empty: any public host).
        max_image_pixels: larger images (and video frames) are refused before decoding.
    """

    allowed_local_media_path: str | None = None
    allowed_domains: tuple[str, ...] = ()
    max_image_pixels: int = 64_000_000


@dataclass
class MRopePositions:
    """M-RoPE positions of an expanded prompt.

    Attributes:
        positions: int64 ``[3, prompt_len]`` (temporal, height, width rows).
        delta: generated token ``i`` (0-based after the prompt) sits at
            ``prompt_len + i + delta`` in all three rows.
    """

    positions: np.ndarray
    delta: int


class MultiModalProcessor:
    """Per-model media processing. Subclasses set ``supported_modalities`` and
    ``processor_kwargs`` and implement ``placeholder_token_id``, ``num_embeds``, ``process`` and
    ``dummy_items``. Used as is, it serves text-only models: every modality is rejected with a
    ValueError.

    Args:
        model_dir: the checkpoint folder (HF processor files live there).
        hf_config: the model's transformers config.
        tokenizer: the model's tokenizer.
        mm_processor_kwargs: settings overriding the checkpoint's (keys of ``processor_kwargs``).

    Raises:
        ValueError: for a key the processor does not know.
    """

    supported_modalities: tuple[str, ...] = ()
    # Keys users may set in mm_processor_kwargs per request (and at construction).
    processor_kwargs: frozenset[str] = frozenset()
    # Further keys only the engine's construction-time mm_processor_kwargs may set.
    construction_kwargs: frozenset[str] = frozenset()
    # Sampling rate audio is loaded at (processors that accept audio set it).
    audio_sampling_rate: int | None = None

    def __init__(
        self, model_dir: str, hf_config, tokenizer, mm_processor_kwargs: dict | None = None
    ):
        self.model_dir = str(model_dir)
        self.hf_config = hf_config
        self.tokenizer = tokenizer
        self.mm_processor_kwargs = self.check_kwargs(
            mm_processor_kwargs, self.processor_kwargs | self.construction_kwargs
        )

    # -- settings ---------------------------------------------------------------------------
    def check_kwargs(self, kwargs: Mapping | None, known: frozenset[str] | None = None) -> dict:
        """``kwargs`` as a dict after refusing keys not in ``known`` (default: the per-request
        ``processor_kwargs``).

        Raises:
            ValueError: naming the unknown keys and the known ones.
        """
        if kwargs is None:
            return {}
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"mm_processor_kwargs must be a dict, got {type(kwargs).__name__}")
        known = self.processor_kwargs if known is None else known
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(
                f"mm_processor_kwargs keys {unknown} are not known to the "
                f"{self.hf_config.model_type} processor; known: {sorted(known)}"
            )
        return dict(kwargs)

    def settings(self, request_kwargs: Mapping | None = None) -> dict:
        """Construction-time ``mm_processor_kwargs`` updated by a request's (checked)."""
        return {**self.mm_processor_kwargs, **self.check_kwargs(request_kwargs)}

    def check_modality(self, modality: str) -> None:
        """Raise ValueError for a modality the model does not accept."""
        if modality not in self.supported_modalities:
            raise ValueError(
                f"model {self.hf_config.model_type!r} does not accept {modality} input"
            )

    # -- media loading ----------------------------------------------------------------------
    def load_media(
        self, modality: str, raw: Any, options: MediaOptions, kwargs: Mapping | None = None
    ) -> Any:
        """Decode one raw item of ``modality`` with that modality's loader.

        Args:
            modality: ``"image"``, ``"video"`` or ``"audio"``.
            raw: what the user passed (PIL, array, bytes, data URL, allowed path or URL).
            options: the engine's media policy.
            kwargs: the request's effective settings (e.g. video ``fps`` / ``num_frames``).

        Returns:
            An RGB PIL image, a :class:`~mmcore.multimodal.video.VideoClip`, or a float32
            waveform at :attr:`audio_sampling_rate`.

        Raises:
            ValueError: a modality the model does not accept, or media that does not load.
        """
        from mmcore.multimodal import media, video

        self.check_modality(modality)
        sources = {
            "allowed_local_media_path": options.allowed_local_media_path,
            "allowed_domains": options.allowed_domains,
        }
        if modality == "image":
            return media.load_image(raw, max_pixels=options.max_image_pixels, **sources)
        if modality == "video":
            sampling = {k: v for k, v in (kwargs or {}).items() if k in video.SAMPLING_KEYS}
            return video.load_video(raw, max_pixels=options.max_image_pixels, **sampling, **sources)
        if self.audio_sampling_rate is None:
            raise ValueError(f"{type(self).__name__} accepts audio but sets no sampling rate")
        return media.load_audio(raw, self.audio_sampling_rate, **sources)

    # -- the per-family part ----------------------------------------------------------------
    def placeholder_token_id(self, modality: str) -> int:
        """Token id of the one placeholder per item in prompts (e.g. the ``<image>`` id)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.placeholder_token_id")

    def placeholder_text(self, modality: str) -> str:
        """The placeholder as text, e.g. ``"<image>"``."""
        return self.tokenizer.convert_ids_to_tokens(self.placeholder_token_id(modality))

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        """Embeddings the model's ``encode`` returns for a loaded ``item``, from its size alone.

        Args:
            modality: the item's modality.
            item: what :meth:`load_media` returned (or a dummy item).
            kwargs: the request's effective settings (:meth:`settings`).
        """
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.num_embeds")

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings for an item already processed by the user (e.g. ``pixel_values``)."""
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.num_embeds_processed")

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """Tensors per item for the model's ``encode`` (one batched call for all items).

        Args:
            modality: the items' modality.
            items: loaded items (:meth:`load_media`).
            kwargs: the request's effective settings (:meth:`settings`).

        Returns:
            One dict of tensors per item; ``encode`` receives them on the model's device.
        """
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.process")

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """``count`` loaded items of the size with the most embeddings (memory profiling).

        Args:
            modality: the items' modality.
            count: how many.
            max_embeds: for items of unbounded size (videos), the most embeddings one item may
                have (the engine passes ``max_model_len``).
        """
        self.check_modality(modality)
        raise NotImplementedError(f"{type(self).__name__}.dummy_items")

    def mrope_positions(self, token_ids: np.ndarray, items: list) -> MRopePositions | None:
        """3-row positions of an expanded prompt, for models with M-RoPE; None otherwise.

        Args:
            token_ids: the expanded prompt (one placeholder token per embedding).
            items: its ``mmcore.engine.inputs.MMItem`` s in prompt order, each with the
                ``offset`` of its first placeholder token.
        """
        return None

    def item_layout(self, modality: str, item: Any, kwargs: Mapping | None = None):
        """The tokens one item expands to when they are more than ``num_embeds`` placeholders
        (begin/end, row-break or tile tokens around the embeddings); None otherwise.

        Returns:
            None, or ``(token_ids, embed_mask)``: int sequences of equal length, mask 1 where
            a position takes the next encoder row.
        """
        return None

    def processed_item_layout(self, modality: str, data: Mapping):
        """:meth:`item_layout` of an item the user passed as processed tensors
        (``pixel_values``) or precomputed ``image_embeds``; None when it is only placeholders.

        Returns:
            None, or ``(token_ids, embed_mask)`` as :meth:`item_layout` returns them.
        """
        return None

    def join_item_boundaries(
        self, token_ids: np.ndarray, features: list
    ) -> tuple[np.ndarray, list]:
        """Re-join tokens across item boundaries where HF, expanding the placeholder in text
        before tokenizing, gets one token for text on both sides (e.g. Gemma 3's newline runs).

        Args:
            token_ids: the expanded prompt.
            features: its ``_core.MMFeature`` s, sorted by offset.

        Returns:
            ``(token_ids, features)``; by default unchanged.
        """
        return token_ids, features

    def placeholder_item(self, modality: str, identifier: str, num_embeds: int, layout=None):
        """The core's description of one item: ``num_embeds`` copies of the placeholder token,
        or the item's :meth:`item_layout` (a replacement sequence with an embedding mask).

        Returns:
            ``mmcore._core.PlaceholderItem``.
        """
        from mmcore import _core

        args = (
            modality_enum(modality),
            identifier,
            self.placeholder_token_id(modality),
            num_embeds,
        )
        if layout is None:
            return _core.PlaceholderItem(*args)
        replacement, embed_mask = layout
        return _core.PlaceholderItem(
            *args, replacement=list(replacement), embed_mask=list(embed_mask)
        )

    @property
    def embeds_hidden_size(self) -> int:
        """Width of precomputed ``image_embeds`` a user may pass instead of media."""
        return int(self.hf_config.get_text_config().hidden_size)
