"""What a request's media will cost, known before any pixel is decoded.

Every image is opened lazily first (PIL reads the header only): its size is checked against
the per-image limit and the request's total-pixel budget, and its number of embeddings (from its
size) against the room left in ``max_model_len``. Only a request that passes all three decodes
anything, so an 8 KB PNG claiming 8000 x 8000 pixels costs a header read, not 200 MB.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmcore.multimodal.media import DEFAULT_MAX_PIXELS, load_bytes, open_image_lazily
from mmcore.multimodal.media_sources import DEFAULT_MAX_BYTES

DEFAULT_MAX_REQUEST_PIXELS = 128_000_000


@dataclass
class MediaBudget:
    """Pixel limits of one request's images.

    Attributes:
        max_image_pixels: largest width x height of one image.
        max_request_pixels: largest total width x height over a request's images.
        max_bytes: largest encoded image read from a file or URL.
        max_aspect_ratio: longest side / shortest side at most: processors resize the short
            side up, so a 1 x 20000 image would become billions of pixels.
    """

    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_aspect_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_request_pixels", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PeekedImage:
    """An image whose size is known and whose pixels are not decoded yet.

    Attributes:
        source: what ``load_image`` decodes later (the bytes already read, or the caller's
            PIL image / array / tensor).
        header: a lazily opened PIL image (size only) or the array itself, for size-based
            embedding counts.
        width, height: the size in pixels.
    """

    source: Any
    header: Any
    width: int
    height: int

    @property
    def num_pixels(self) -> int:
        return self.width * self.height


def peek_image(
    raw: Any,
    budget: MediaBudget,
    allowed_local_media_path: str | None,
    allowed_domains: Collection[str] = (),
) -> PeekedImage:
    """Read an image's size without decoding it (files and URLs are read once, as bytes).

    Args:
        raw: any image form ``load_image`` takes.
        budget: the limits (per image size, bytes).
        allowed_local_media_path: folder local files must lie in.
        allowed_domains: hosts http(s) URLs may come from (empty: any public host).

    Raises:
        ValueError: unreadable header, refused source, or more pixels than one image may have.
    """
    if isinstance(raw, Image.Image):
        header, source = raw, raw
    elif isinstance(raw, np.ndarray) or type(raw).__module__.startswith("torch"):
        shape = tuple(raw.shape)
        if len(shape) < 2:
            raise ValueError(f"image arrays must be at least 2-D, got shape {list(shape)}")
        header, source = raw, raw
    else:
        if isinstance(raw, (str, os.PathLike)):
            data = load_bytes(
                raw,
                "image",
                allowed_local_media_path=allowed_local_media_path,
                allowed_domains=allowed_domains,
                max_bytes=budget.max_bytes,
            )
        elif isinstance(raw, (bytes, bytearray, memoryview)):
            data = bytes(raw)
        else:
            raise ValueError(f"cannot load an image from an object of type {type(raw).__name__}")
        header, source = open_image_lazily(data), data
    width, height = _size(header)
    if width * height > budget.max_image_pixels:
        raise ValueError(
            f"an image is {width}x{height} = {width * height} pixels, more than the "
            f"{budget.max_image_pixels} allowed (refused before decoding)"
        )
    if min(width, height) < 1:
        raise ValueError(f"an image is {width}x{height}: it has no pixels")
    if max(width, height) > budget.max_aspect_ratio * min(width, height):
        raise ValueError(
            f"an image is {width}x{height}, more elongated than the {budget.max_aspect_ratio:g}:1 "
            "aspect ratio allowed (refused before decoding)"
        )
    return PeekedImage(source, header, width, height)


def _size(header: Any) -> tuple[int, int]:
    if isinstance(header, Image.Image):
        return int(header.width), int(header.height)
    shape = tuple(header.shape)
    if type(header).__module__.startswith("torch") and len(shape) == 3:
        return int(shape[2]), int(shape[1])  # CHW
    return int(shape[1]), int(shape[0])  # HW / HWC


def check_request_pixels(images: list[PeekedImage], budget: MediaBudget) -> None:
    """Raise ValueError when a request's images together exceed the pixel budget."""
    total = sum(im.num_pixels for im in images)
    if total > budget.max_request_pixels:
        raise ValueError(
            f"the request's {len(images)} images have {total} pixels in all, more than the "
            f"{budget.max_request_pixels} allowed per request (refused before decoding)"
        )
