"""Turn what a user passes as an image or audio clip into a PIL RGB image / a float32 waveform.

Accepted images: PIL images, numpy arrays (HW, HWC with 1/3/4 channels, uint8), torch tensors
(CHW or HW, uint8 or float in [0, 1]), encoded bytes, ``data:image/...;base64,`` URLs, ``file://``
URLs and local paths (only under ``allowed_local_media_path``), http(s) URLs (public hosts, or
only ``allowed_domains`` when given; see ``url_fetch``). Every bad input raises ValueError naming
the problem.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Collection

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmcore.multimodal import audio_io
from mmcore.multimodal.media_sources import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    fetch_url,
    file_url_path,
    parse_data_url,
    read_local_file,
)

__all__ = ["fetch_url", "load_audio", "load_bytes", "load_image"]

DEFAULT_MAX_PIXELS = 64_000_000
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def load_bytes(
    source: str | os.PathLike,
    expected_type: str,
    *,
    allowed_local_media_path: str | None = None,
    allowed_domains: Collection[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """The raw bytes behind a data URL, file URL, local path or http(s) URL.

    Args:
        source: The URL or path.
        expected_type: Top-level MIME type a data URL must declare (``"image"``, ``"audio"``).
        allowed_local_media_path: Directory local files may come from; None refuses them.
        allowed_domains: Hosts http(s) URLs may be fetched from (empty: any public host).
        max_bytes: Largest file or download accepted.
        timeout_s: Network timeout.

    Returns:
        The encoded media bytes.
    """
    if isinstance(source, os.PathLike):
        return read_local_file(source, allowed_local_media_path, max_bytes)
    if source.startswith("data:"):
        return parse_data_url(source, expected_type)[1]
    lowered = source[:8].lower()
    if lowered.startswith("file://"):
        return read_local_file(file_url_path(source), allowed_local_media_path, max_bytes)
    if lowered.startswith(("http://", "https://")):
        return fetch_url(source, allowed_domains, max_bytes, timeout_s)
    if _URL_SCHEME.match(source):
        raise ValueError(f"unsupported URL scheme in {source[:64]!r}")
    return read_local_file(source, allowed_local_media_path, max_bytes)


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height} pixels, more than max_pixels="
            f"{max_pixels} (refused before decoding: possible decompression bomb)"
        )


def decode_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes, checking the declared size before decoding any pixel.

    Raises:
        ValueError: Empty, unrecognised, too many pixels, corrupt or truncated data.
    """
    image = open_image_lazily(data)
    _check_pixels(image.width, image.height, max_pixels, f"{image.format} image")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{image.format} image data is corrupt or truncated: {e}") from None
    return image


def open_image_lazily(data: bytes) -> Image.Image:
    """Open encoded image bytes reading the header only (size and format; no pixel decoded).

    Raises:
        ValueError: empty, unrecognised or corrupt header.
    """
    if not data:
        raise ValueError("image data is empty")
    try:
        image = Image.open(io.BytesIO(data))  # lazy: parses the header only
    except Image.DecompressionBombError as e:
        raise ValueError(f"image refused before decoding: {e}") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"image data ({len(data)} bytes, starting {data[:8]!r}) is not in a known image format"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image data ({len(data)} bytes) has a corrupt header: {e}") from None
    return image


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale as 8-bit "L" (Pillow's convert would clip)."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError("float (mode F) images must hold finite values in [0, 1]")
        scaled = np.round(values * 255.0)
    else:  # I;16 variants and I: 16-bit sample range, as 16-bit PNG and TIFF files store it
        scaled = np.round(np.clip(values.astype(np.float64), 0, 65535) / 257.0)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16"):
        image = _high_depth_to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        # Transparent pixels become white, not the arbitrary colour stored under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_image(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 (HW or HWC), got dtype {array.dtype}; scale floats in "
            "[0, 1] by 255 and cast"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"numpy images must be HW or HWC with 1, 3 or 4 channels, got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array has no pixels (shape {array.shape})")
    _check_pixels(array.shape[1], array.shape[0], max_pixels, "image array")
    return Image.fromarray(np.ascontiguousarray(array))


def _tensor_to_array(tensor) -> np.ndarray:
    import torch

    t = tensor.detach().cpu()
    if t.ndim == 3:
        t = t.permute(1, 2, 0)  # CHW -> HWC
    elif t.ndim != 2:
        raise ValueError(f"image tensors must be CHW or HW, got shape {tuple(tensor.shape)}")
    if t.dtype == torch.uint8:
        return t.contiguous().numpy()
    if not t.is_floating_point():
        raise ValueError(f"image tensors must be uint8 or float in [0, 1], got {t.dtype}")
    t = t.float()
    if t.numel() and (not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 1):
        raise ValueError("float image tensors must hold finite values in [0, 1]")
    return (t * 255.0).round().to(torch.uint8).contiguous().numpy()


def _is_tensor(obj) -> bool:
    torch = sys.modules.get("torch")  # no import: a user with a tensor has torch loaded
    return torch is not None and isinstance(obj, torch.Tensor)


def load_image(
    obj,
    *,
    allowed_local_media_path: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_domains: Collection[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Image.Image:
    """Load an image from any accepted form as an RGB PIL image.

    Args:
        obj: PIL image, numpy array (HW / HWC uint8, 1, 3 or 4 channels), torch tensor (CHW / HW,
            uint8 or float in [0, 1]), encoded bytes, ``data:image/...;base64,`` URL, ``file://``
            URL, local path (str or PathLike), or http(s) URL.
        allowed_local_media_path: Directory local files may be read from (symlinks and ``..``
            resolved first); None refuses every local file. Relative paths are relative to it.
        max_pixels: Largest width x height accepted, checked before decoding.
        allowed_domains: Hosts http(s) URLs may be fetched from (empty: any public host, never
            a loopback, private, link-local or metadata address); a listed host is trusted.
        max_bytes: Largest encoded file or download accepted.
        timeout_s: Network timeout for http(s) URLs.

    Returns:
        A decoded ``PIL.Image.Image`` in mode RGB (transparent pixels composited on white).

    Raises:
        ValueError: Unsupported type, refused source, bad data URL, corrupt or truncated data,
            too many pixels.
    """
    if isinstance(obj, Image.Image):
        _check_pixels(obj.width, obj.height, max_pixels, "PIL image")
        try:
            obj.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"PIL image could not be decoded: {e}") from None
        return _to_rgb(obj)
    if isinstance(obj, np.ndarray):
        return _to_rgb(_array_to_image(obj, max_pixels))
    if _is_tensor(obj):
        return _to_rgb(_array_to_image(_tensor_to_array(obj), max_pixels))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _to_rgb(decode_image_bytes(bytes(obj), max_pixels=max_pixels))
    if isinstance(obj, (str, os.PathLike)):
        data = load_bytes(
            obj,
            "image",
            allowed_local_media_path=allowed_local_media_path,
            allowed_domains=allowed_domains,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
        )
        return _to_rgb(decode_image_bytes(data, max_pixels=max_pixels))
    raise ValueError(f"cannot load an image from an object of type {type(obj).__name__}")


def load_audio(
    obj,
    sampling_rate: int,
    *,
    allowed_local_media_path: str | None = None,
    allowed_domains: Collection[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_seconds: float = audio_io.DEFAULT_MAX_AUDIO_SECONDS,
) -> np.ndarray:
    """Load an audio clip as a mono float32 waveform at ``sampling_rate``.

    Args:
        obj: numpy/torch array already at ``sampling_rate`` (1-D, or 2-D channels x samples,
            float, or int16/int32 PCM), ``(array, sr)`` tuple (vLLM's form; resampled with soxr
            when ``sr`` differs), encoded bytes (WAV, FLAC, OGG, MP3, M4A, WebM, ...),
            ``data:audio/...;base64,`` URL, ``file://`` URL, local path or http(s) URL.
        sampling_rate: Rate the model expects, in Hz.
        allowed_local_media_path: See ``load_image``.
        allowed_domains: See ``load_image``.
        max_bytes: Largest encoded file or download accepted.
        timeout_s: Network timeout for http(s) URLs.
        max_seconds: Longest clip accepted (checked from the file header before decoding).

    Returns:
        1-D float32 array, values in [-1, 1] for PCM input.

    Raises:
        ValueError: Unsupported type or layout, non-finite samples, bad rate, unreadable or
            corrupt file, a clip longer than ``max_seconds``.
    """
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    if isinstance(obj, tuple):
        if len(obj) != 2:
            raise ValueError(f"audio tuples must be (array, sampling_rate), got {len(obj)} items")
        waveform, source_rate = obj
        mono = audio_io.to_mono_float(_as_array(waveform))
        audio_io.check_duration(mono.size, audio_io.check_rate(source_rate), max_seconds)
        return audio_io.resample(mono, source_rate, int(sampling_rate))
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        mono = audio_io.to_mono_float(_as_array(obj))
        audio_io.check_duration(mono.size, sampling_rate, max_seconds)
        return mono
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
    elif isinstance(obj, (str, os.PathLike)):
        data = load_bytes(
            obj,
            "audio",
            allowed_local_media_path=allowed_local_media_path,
            allowed_domains=allowed_domains,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
        )
    else:
        raise ValueError(f"cannot load audio from an object of type {type(obj).__name__}")
    if len(data) > max_bytes:
        raise ValueError(f"audio file is {len(data)} bytes, more than the limit of {max_bytes}")
    waveform, source_rate = audio_io.decode_audio(data, max_seconds=max_seconds)
    return audio_io.resample(waveform, source_rate, int(sampling_rate))


def _as_array(obj) -> np.ndarray:
    if _is_tensor(obj):
        return obj.detach().cpu().float().numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise ValueError(f"audio samples must be a numpy array or tensor, got {type(obj).__name__}")
