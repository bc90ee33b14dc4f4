"""Turn what a user passes as a video into uint8 frames ``(T, H, W, 3)`` and their frame rate.

Accepted: a numpy array ``(T, H, W, 3)`` uint8, a list of PIL images (or ``(H, W, 3)`` uint8
arrays), or an encoded video file as bytes, a ``data:video/...;base64,`` URL, a ``file://`` URL or
local path (only under ``allowed_local_media_path``) or an http(s) URL (only from
``allowed_domains``), decoded with PyAV (``av``). Files are sampled at ``fps`` frames per second
(default 2, as Qwen-VL models were trained), or at exactly ``num_frames`` frames spread
uniformly; ``max_frames`` caps the count for every source. Bad input raises ValueError.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmcore.multimodal.media import DEFAULT_MAX_PIXELS, load_bytes

DEFAULT_FPS = 2.0
DEFAULT_MAX_VIDEO_BYTES = 512 << 20
SAMPLING_KEYS = ("fps", "num_frames", "max_frames")


@dataclass(frozen=True)
class VideoClip:
    """Decoded, sampled frames of one video.

    Attributes:
        frames: uint8 ``(T, H, W, 3)``.
        fps: frames per second of ``frames`` after sampling (None: the user gave frames
            without a rate).
    """

    frames: np.ndarray
    fps: float | None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every frame."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def positive(name: str, value, kind=float):
    """``value`` as a positive ``kind`` (None passes); ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"video {name} must be a positive number, got {value!r}")
    if kind is int and int(value) != value:
        raise ValueError(f"video {name} must be an integer, got {value!r}")
    return kind(value)


def uniform_indices(total: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``total`` frames (first and last included)."""
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def _check_frames(frames: np.ndarray, max_pixels: int) -> np.ndarray:
    if frames.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"a video array must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("the video has 0 frames")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"video frames have no pixels (shape {frames.shape})")
    if frames.shape[1] * frames.shape[2] > max_pixels:
        raise ValueError(
            f"video frames are {frames.shape[2]}x{frames.shape[1]}, more than max_pixels="
            f"{max_pixels}"
        )
    return frames


def _frames_from_list(items: list, max_pixels: int) -> np.ndarray:
    if not items:
        raise ValueError("the video has 0 frames")
    arrays = []
    for frame in items:
        if isinstance(frame, Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        if not isinstance(frame, np.ndarray):
            raise ValueError(
                f"video frames must be PIL images or (H, W, 3) uint8 arrays, got "
                f"{type(frame).__name__}"
            )
        arrays.append(frame)
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"video frames differ in size: {sorted({a.shape for a in arrays})}")
    return _check_frames(np.stack(arrays), max_pixels)


def decode_video_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """All frames of an encoded video file and its average frame rate.

    Returns:
        (uint8 ``(T, H, W, 3)``, fps).

    Raises:
        ValueError: empty, undecodable or frameless data, or frames over ``max_pixels``.
    """
    import av

    if not data:
        raise ValueError("video data is empty")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.width * stream.codec_context.height > max_pixels:
                raise ValueError(
                    f"video frames are {stream.codec_context.width}x"
                    f"{stream.codec_context.height}, more than max_pixels={max_pixels}"
                )
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.error.FFmpegError as e:
        raise ValueError(f"video data ({len(data)} bytes) could not be decoded: {e}") from None
    if not frames:
        raise ValueError(f"video data ({len(data)} bytes) holds no decodable frame")
    fps = float(rate) if rate else None
    return _check_frames(np.stack(frames), max_pixels), fps


def sample_frames(
    frames: np.ndarray,
    source_fps: float | None,
    *,
    fps: float | None,
    num_frames: int | None,
    max_frames: int | None,
    decoded: bool,
):
    """Frames kept from ``frames`` and their rate, per the sampling options (see module doc)."""
    total = frames.shape[0]
    if num_frames is not None and fps is not None and decoded:
        raise ValueError("video fps and num_frames are mutually exclusive; give one")
    count = total
    if num_frames is not None:
        if num_frames > total:
            raise ValueError(f"num_frames={num_frames} is more than the video's {total} frames")
        count = num_frames
    elif decoded and source_fps:
        wanted = fps or DEFAULT_FPS
        count = max(1, min(total, int(round(total / source_fps * wanted))))
    if max_frames is not None:
        count = min(count, max_frames)
    rate = source_fps if decoded else fps
    if count == total:
        return frames, rate
    indices = uniform_indices(total, count)
    return frames[indices], (rate * count / total if rate else None)


def load_video(
    obj,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    allowed_local_media_path: str | None = None,
    allowed_domains: Collection[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
) -> VideoClip:
    """Load a video from any accepted form (see the module docstring).

    Args:
        obj: ``(T, H, W, 3)`` uint8 array, list of frames, bytes, data URL, path or URL.
        fps: for files, the sampling rate (default 2); for frames given directly, their rate.
        num_frames: sample exactly this many frames uniformly (files or frames).
        max_frames: keep at most this many frames (uniformly).
        allowed_local_media_path: folder local files may come from; None refuses them.
        allowed_domains: hosts http(s) URLs may be fetched from.
        max_pixels: largest frame (width x height) accepted.
        max_bytes: largest encoded file accepted.

    Returns:
        The sampled :class:`VideoClip`.

    Raises:
        ValueError: 0 frames, a wrong shape or dtype, an undecodable file, bad options.
    """
    if isinstance(obj, VideoClip):
        return obj
    fps = positive("fps", fps)
    num_frames = positive("num_frames", num_frames, int)
    max_frames = positive("max_frames", max_frames, int)
    decoded = False
    source_fps = None
    if isinstance(obj, np.ndarray):
        frames = _check_frames(obj, max_pixels)
    elif isinstance(obj, (list, tuple)):
        frames = _frames_from_list(list(obj), max_pixels)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        frames, source_fps = decode_video_bytes(bytes(obj), max_pixels=max_pixels)
        decoded = True
    elif isinstance(obj, (str, os.PathLike)):
        data = load_bytes(
            obj,
            "video",
            allowed_local_media_path=allowed_local_media_path,
            allowed_domains=allowed_domains,
            max_bytes=max_bytes,
        )
        frames, source_fps = decode_video_bytes(data, max_pixels=max_pixels)
        decoded = True
    else:
        raise ValueError(f"cannot load a video from an object of type {type(obj).__name__}")
    frames, rate = sample_frames(
        frames,
        source_fps,
        fps=fps,
        num_frames=num_frames,
        max_frames=max_frames,
        decoded=decoded,
    )
    return VideoClip(np.ascontiguousarray(frames), rate)


def encode_video(frames: np.ndarray, fps: int = 4, codec: str = "mpeg4") -> bytes:
    """Encode uint8 ``(T, H, W, 3)`` frames as an MP4 file in memory (tests and examples).

    Args:
        frames: the frames; H and W must be even for most codecs.
        fps: the file's frame rate.
        codec: an FFmpeg encoder PyAV ships.

    Returns:
        The file's bytes.
    """
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
