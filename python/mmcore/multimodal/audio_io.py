"""Waveform helpers for ``media.load_audio``: PCM WAV decoding, mono float32, linear resampling."""

from __future__ import annotations

import io
import wave

import numpy as np

# PCM sample width in bytes -> (numpy dtype of the stored samples, full-scale value).
_PCM = {1: (np.uint8, 128.0), 2: (np.dtype("<i2"), 32768.0), 4: (np.dtype("<i4"), 2147483648.0)}


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """A 1-D float32 waveform from 1-D samples or a 2-D (channels, samples) array.

    Float input is kept as is; int16 PCM is scaled to [-1, 1]. Channels are averaged.

    Raises:
        ValueError: Other dtypes, more than 2 dimensions, empty or non-finite samples.
    """
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio arrays must be float or int16 PCM, got dtype {samples.dtype}")
    if samples.ndim == 2:
        samples = samples.mean(axis=0)  # (channels, samples), as torchaudio and librosa use
    elif samples.ndim != 1:
        raise ValueError(
            f"audio arrays must be 1-D or 2-D (channels, samples), got shape {samples.shape}"
        )
    if samples.size == 0:
        raise ValueError("audio clip has no samples")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError("audio samples must be finite (found NaN or inf)")
    return samples


def resample_linear(samples: np.ndarray, source_rate, target_rate: int) -> np.ndarray:
    """Resample a 1-D waveform by linear interpolation (no-op when the rates are equal).

    Args:
        samples: 1-D float32 waveform.
        source_rate: Its sampling rate in Hz (positive number).
        target_rate: The rate wanted in Hz.

    Returns:
        ``round(len * target_rate / source_rate)`` samples (at least 1), float32.
    """
    if isinstance(source_rate, bool) or not isinstance(source_rate, (int, float, np.number)):
        raise ValueError(f"audio sampling rate must be a number, got {source_rate!r}")
    if not np.isfinite(source_rate) or source_rate <= 0:
        raise ValueError(f"audio sampling rate must be positive, got {source_rate!r}")
    if source_rate == target_rate:
        return samples
    num_out = max(1, int(round(samples.size * target_rate / source_rate)))
    # Output sample i sits at time i / target_rate, i.e. at input index i * source / target.
    positions = np.arange(num_out, dtype=np.float64) * (source_rate / target_rate)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode PCM WAV bytes (8/16/24/32-bit, any channel count) to mono float32.

    Returns:
        ``(waveform, sampling_rate)``.

    Raises:
        ValueError: Not a WAV file, a non-PCM encoding, or truncated sample data.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            num_frames = wav.getnframes()
            frames = wav.readframes(num_frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"audio data is not a readable PCM WAV file: {e}") from None
    if num_frames == 0:
        raise ValueError("WAV file has no samples")
    if len(frames) != num_frames * channels * width:
        raise ValueError(
            f"WAV file is truncated: header declares {num_frames} frames, data holds "
            f"{len(frames) // max(1, channels * width)}"
        )
    if width == 3:
        # 24-bit little endian: place the three bytes in the top of an int32.
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = raw
        ints, scale = padded.view("<i4").reshape(-1), 2147483648.0
        samples = ints.astype(np.float32) / scale
    elif width in _PCM:
        dtype, scale = _PCM[width]
        samples = np.frombuffer(frames, dtype=dtype).astype(np.float32)
        samples = (samples - 128.0) / scale if width == 1 else samples / scale
    else:
        raise ValueError(f"unsupported WAV sample width of {width} bytes")
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate
