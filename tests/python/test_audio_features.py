"""Whisper log-mel features computed by mmcore (batched torch) equal HF's feature extractor."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from mmcore.multimodal.audio_features import WhisperMelFeatures
from mmcore.testing import speech


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    spoken = speech.synthesize_speech("Seven green bottles hanging on the wall.", 16000)
    return [
        spoken,
        (0.1 * rng.standard_normal(16000 * 7)).astype(np.float32),  # noise, 7 s
        np.sin(np.arange(40_000) * 0.05).astype(np.float32) * 0.3,  # tone, 2.5 s
        (0.2 * rng.standard_normal(16000 * 31 + 77)).astype(np.float32),  # > 30 s: cut
        np.zeros(1234, np.float32),  # silence
    ]


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_features_equal_hf(clips, num_mel_bins):
    hf = WhisperFeatureExtractor(feature_size=num_mel_bins)
    expected = hf(clips, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    ours = WhisperMelFeatures.from_hf(hf)(clips)
    assert ours.shape == expected["input_features"].shape == (len(clips), num_mel_bins, 3000)
    torch.testing.assert_close(ours, expected["input_features"], atol=1e-4, rtol=0)
    counts = [
        ours_frames
        for ours_frames in map(
            WhisperMelFeatures.from_hf(hf).num_valid_frames, (c.size for c in clips)
        )
    ]
    assert counts == expected["attention_mask"].sum(-1).tolist()


def test_each_clip_is_computed_alone(clips):
    mel = WhisperMelFeatures(128)
    batch = mel(clips)
    for i, clip in enumerate(clips):  # batching must not mix clips (per-clip maximum)
        torch.testing.assert_close(batch[i], mel([clip])[0], atol=1e-5, rtol=0)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="no audio clips"):
        WhisperMelFeatures(80)([])
