"""mmcore.multimodal.media.load_audio: arrays, (array, rate) tuples, WAV bytes and data URLs."""

import base64
import io
import wave

import numpy as np
import pytest
import torch

from mmcore.multimodal.media import load_audio


def wav_bytes(samples, rate, channels=1, width=2):
    scale = {1: 127, 2: 32767, 4: 2**31 - 1}[width]
    ints = np.round(np.asarray(samples) * scale).astype({1: np.int16, 2: "<i2", 4: "<i4"}[width])
    if width == 1:
        ints = (ints + 128).astype(np.uint8)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(ints.tobytes())
    return buf.getvalue()


def tone(rate, seconds=0.5, hz=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_audio_array_at_target_rate():
    wave_in = tone(16000)
    out = load_audio(wave_in, 16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, wave_in)
    stereo = np.stack([wave_in, np.zeros_like(wave_in)])
    np.testing.assert_allclose(load_audio(torch.from_numpy(stereo), 16000), wave_in / 2)


def test_audio_tuple_is_resampled_band_limited():
    source = tone(8000)
    out = load_audio((source, 8000), 16000)
    assert out.shape == (8000,)
    # Away from the clip's edges the upsampled tone is the true 16 kHz tone.
    np.testing.assert_allclose(out[200:-200], tone(16000)[200:-200], atol=2e-3)
    # Downsampling removes what the new rate cannot hold instead of aliasing it: a 3 kHz tone
    # at 8 kHz -> 4 kHz (Nyquist 2 kHz) is filtered out; decimation would fold it to 1 kHz.
    high = tone(8000, hz=3000.0)
    halved = load_audio((high, 8000), 4000)
    assert halved.shape == (2000,)
    assert np.abs(halved[100:-100]).max() < 0.01
    assert np.abs(high[::2]).max() > 0.4  # what naive decimation would have kept


@pytest.mark.parametrize("width", [1, 2, 4])
def test_wav_bytes_and_data_url(width):
    left = tone(22050)
    frames = np.stack([left, left], axis=1).reshape(-1)  # interleaved stereo
    data = wav_bytes(frames, 22050, channels=2, width=width)
    out = load_audio(data, 22050)
    np.testing.assert_allclose(out, left, atol=1.5 / {1: 127, 2: 32767, 4: 2**31}[width])
    url = "data:audio/wav;base64," + base64.b64encode(data).decode()
    assert load_audio(url, 16000).shape == (16000 // 2,)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (b"RIFF....WAVEjunk", "not a readable audio file"),
        (b"", "audio data is empty"),
        ("data:image/png;base64,aGVsbG8=", "MIME type 'image/png', expected audio"),
        (np.array([0.0, np.nan]), "finite"),
        (np.zeros(4, np.int64), "float or int16"),
        ((np.zeros(16000 * 3, np.float32), 16000), "more than the limit"),
        (np.zeros((2, 2, 2), np.float32), "1-D or 2-D"),
        ((np.zeros(4, np.float32), 0), "must be positive"),
        ((np.zeros(4, np.float32), 8000, 1), "got 3 items"),
        (np.zeros(0, np.float32), "no samples"),
        (3.5, "type float"),
    ],
)
def test_audio_errors(obj, message):
    with pytest.raises(ValueError, match=message):
        load_audio(obj, 16000, max_seconds=2.0)


def test_cut_wav_gives_the_samples_it_holds_and_a_bare_header_is_refused():
    data = wav_bytes(tone(16000), 16000)
    out = load_audio(data[: len(data) // 2], 16000)  # as every decoder does with a cut file
    np.testing.assert_allclose(out, tone(16000)[: out.size], atol=1e-4)
    assert 3900 < out.size < 4100
    with pytest.raises(ValueError, match="no samples|not a readable"):
        load_audio(data[:44], 16000)


def test_24_bit_wav():
    samples = tone(16000)
    ints = np.round(samples * (2**23 - 1)).astype("<i4")
    packed = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()  # low 3 bytes, little endian
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(packed)
    np.testing.assert_allclose(load_audio(buf.getvalue(), 16000), samples, atol=1e-6)


def test_wav_from_allowed_local_file(tmp_path):
    (tmp_path / "tone.wav").write_bytes(wav_bytes(tone(16000), 16000))
    out = load_audio("tone.wav", 16000, allowed_local_media_path=str(tmp_path))
    np.testing.assert_allclose(out, tone(16000), atol=1e-4)
    with pytest.raises(ValueError, match="local media is disabled"):
        load_audio(str(tmp_path / "tone.wav"), 16000)
