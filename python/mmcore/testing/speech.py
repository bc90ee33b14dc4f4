"""Real speech made on the machine (espeak-ng), and encoders to the formats users upload.

Tests and benchmarks use these instead of downloaded clips: nothing comes from a hub.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile

from mmcore.multimodal import audio_io

# Container formats written with libsndfile (format, subtype) and with FFmpeg (format, codec).
SNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
FFMPEG_FORMATS = {"m4a": ("ipod", "aac"), "webm": ("webm", "libopus")}


def synthesize_speech(text: str, sampling_rate: int = 16000, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng, as a mono float32 waveform at ``sampling_rate``.

    Raises:
        RuntimeError: espeak-ng is not installed (``apt-get install espeak-ng``).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; apt-get install espeak-ng")
    wav = subprocess.run(
        [exe, "-v", voice, "--stdout", text], check=True, capture_output=True, timeout=60
    ).stdout
    samples, rate = audio_io.decode_audio(wav)
    return audio_io.resample(samples, rate, sampling_rate)


def encode(samples: np.ndarray, sampling_rate: int, fmt: str) -> bytes:
    """``samples`` (mono float32) encoded as a ``fmt`` file: wav, flac, ogg, mp3, m4a or webm."""
    if fmt in SNDFILE_FORMATS:
        container, subtype = SNDFILE_FORMATS[fmt]
        buf = io.BytesIO()
        soundfile.write(buf, samples, sampling_rate, format=container, subtype=subtype)
        return buf.getvalue()
    if fmt in FFMPEG_FORMATS:
        return _encode_ffmpeg(samples, sampling_rate, *FFMPEG_FORMATS[fmt])
    raise ValueError(f"unknown audio format {fmt!r}")


def _encode_ffmpeg(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    import av

    if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
        samples, rate = audio_io.resample(samples, rate, 48000), 48000
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        for start in range(0, len(samples), 1024):
            chunk = np.ascontiguousarray(samples[start : start + 1024], np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
