"""Audio decoding for ``media.load_audio``: containers, mono mixdown, band-limited resampling.

Decoding uses maintained libraries: libsndfile through ``soundfile`` (WAV, FLAC, OGG/Vorbis,
Opus, MP3 where libsndfile has it) and FFmpeg through PyAV (``av``) for the compressed containers
libsndfile cannot read (M4A/AAC, WebM, MP4, ...). Resampling is soxr's high-quality band-limited
resampler (linear interpolation aliases when downsampling). Durations are read from the header and
checked against the limit before the samples are decoded.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile
import soxr

DEFAULT_MAX_AUDIO_SECONDS = 20 * 60.0


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """A 1-D float32 waveform from 1-D samples or a 2-D (channels, samples) array.

    Float input is kept as is; int16 / int32 PCM is scaled to [-1, 1]. Channels are averaged.

    Raises:
        ValueError: Other dtypes, more than 2 dimensions, empty or non-finite samples.
    """
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    elif samples.dtype == np.int32:
        samples = samples.astype(np.float32) / 2147483648.0
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(
            f"audio arrays must be float or int16/int32 PCM, got dtype {samples.dtype}"
        )
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


def check_rate(rate) -> float:
    """``rate`` as a positive finite number of Hz, else ValueError."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)):
        raise ValueError(f"audio sampling rate must be a number, got {rate!r}")
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"audio sampling rate must be positive, got {rate!r}")
    return float(rate)


def resample(samples: np.ndarray, source_rate, target_rate: int) -> np.ndarray:
    """Resample a 1-D float32 waveform with soxr (no-op when the rates are equal).

    Args:
        samples: 1-D float32 waveform.
        source_rate: Its sampling rate in Hz (positive number).
        target_rate: The rate wanted in Hz.

    Returns:
        About ``len * target_rate / source_rate`` samples (at least 1), float32.
    """
    source_rate = check_rate(source_rate)
    if source_rate == target_rate:
        return samples
    out = soxr.resample(samples, source_rate, target_rate, quality="HQ")
    if out.size == 0:  # a clip shorter than one output sample
        out = samples[:1]
    return np.ascontiguousarray(out, dtype=np.float32)


def check_duration(num_frames: int, rate: float, max_seconds: float) -> None:
    """Refuse a clip whose header declares more than ``max_seconds`` (before decoding it)."""
    if num_frames <= 0:
        raise ValueError("audio file has no samples")
    seconds = num_frames / rate
    if seconds > max_seconds:
        raise ValueError(
            f"audio clip is {seconds:.1f} s long, more than the limit of {max_seconds:g} s"
        )


def decode_audio(
    data: bytes, *, max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
) -> tuple[np.ndarray, int]:
    """Decode an encoded audio file (any container soundfile or PyAV reads) to mono float32.

    Args:
        data: The file's bytes.
        max_seconds: Longest clip accepted, checked from the header before decoding.

    Returns:
        ``(waveform, sampling_rate)``.

    Raises:
        ValueError: Not a readable audio file, no audio stream, no samples, or too long.
    """
    if not data:
        raise ValueError("audio data is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            check_duration(f.frames, f.samplerate, max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        return _decode_with_av(data, max_seconds, sndfile_error=e)
    if samples.shape[0] == 0:
        raise ValueError("audio file has no samples")
    return to_mono_float(samples.T), int(rate)


def _decode_with_av(data: bytes, max_seconds: float, sndfile_error) -> tuple[np.ndarray, int]:
    import av  # imported lazily: FFmpeg's libraries are large and most clips are WAV/FLAC

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError):
        reason = str(sndfile_error).rsplit(": ", 1)[-1]  # drop libsndfile's "<BytesIO ...>"
        raise ValueError(f"audio data is not a readable audio file: {reason}") from None
    with container:
        if not container.streams.audio:
            raise ValueError("file has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise ValueError("audio stream declares no sampling rate")
        if container.duration is not None:  # microseconds, from the container header
            check_duration(max(1, int(container.duration * rate / 1e6)), rate, max_seconds)
        # Mixdown and conversion to float32 planar by FFmpeg's resampler at the stream's rate.
        to_float = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        chunks, num_samples, limit = [], 0, int(max_seconds * rate) + 1
        try:
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    num_samples += chunks[-1].size
                if num_samples > limit:
                    check_duration(num_samples, rate, max_seconds)
            for out in to_float.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as e:
            raise ValueError(f"audio file is corrupt: {e}") from None
    if not chunks or sum(c.size for c in chunks) == 0:
        raise ValueError("audio file has no samples")
    return to_mono_float(np.concatenate(chunks)), int(rate)
