"""Real (synthesised) speech through every container users upload, decoded by load_audio."""

import numpy as np
import pytest

from mmcore.multimodal.media import load_audio
from mmcore.testing import speech


@pytest.fixture(scope="module")
def spoken():
    return speech.synthesize_speech("The quick brown fox jumps over the lazy dog.", 22050)


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_shift: int = 3000) -> float:
    """Best normalised correlation of b against a over small shifts (codec delays differ)."""
    best = 0.0
    n = min(a.size, b.size) - max_shift
    for shift in range(0, max_shift, 8):
        for x, y in ((a[:n], b[shift : shift + n]), (a[shift : shift + n], b[:n])):
            best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))))
    return best


def test_speech_is_speech(spoken):
    assert 1.5 < spoken.size / 22050 < 6.0  # a sentence, not silence or a crash
    assert np.abs(spoken).max() > 0.1


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "m4a", "webm"])
def test_each_container_decodes_to_the_same_speech(spoken, fmt):
    data = speech.encode(spoken, 22050, fmt)
    out = load_audio(data, 16000)
    reference = load_audio((spoken, 22050), 16000)
    assert abs(out.size - reference.size) < 0.1 * reference.size
    assert _aligned_correlation(reference, out) > 0.9


def test_stereo_file_is_mixed_down(tmp_path):
    left = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32) * 0.5
    import soundfile

    path = tmp_path / "stereo.flac"
    soundfile.write(path, np.stack([left, -left * 0 + 0.25 * left], axis=1), 16000)
    out = load_audio(str(path.name), 16000, allowed_local_media_path=str(tmp_path))
    np.testing.assert_allclose(out, (left + 0.25 * left) / 2, atol=1e-3)


def test_duration_limit_is_checked_from_the_header():
    long_clip = np.zeros(16000 * 5, np.float32)
    for fmt in ("flac", "webm"):
        with pytest.raises(ValueError, match="more than the limit of 2 s"):
            load_audio(speech.encode(long_clip, 16000, fmt), 16000, max_seconds=2.0)


def test_corrupt_compressed_file_is_a_value_error(spoken):
    data = speech.encode(spoken, 22050, "m4a")
    with pytest.raises(ValueError):
        load_audio(data[:200], 16000)
