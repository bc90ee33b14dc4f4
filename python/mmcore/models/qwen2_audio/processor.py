"""Qwen2-Audio processor: 16 kHz clips -> Whisper log-mel frames; one ``<|AUDIO|>`` per embedding.

A clip of ``n`` samples has ``F = ceil(n / 160)`` mel frames (at most 3,000: the 30 s window),
``(F - 1) // 2 + 1`` encoder positions after the strided convolution, and half as many
embeddings after the encoder's average pooling; HF's ``Qwen2AudioProcessor`` counts the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mmcore.models.whisper_encoder import conv_output_len
from mmcore.multimodal.audio_features import WhisperMelFeatures
from mmcore.multimodal.processor import MultiModalProcessor

# Frames past a clip's last valid one that the convolutions read (conv1 and strided conv2).
_CONV_CONTEXT_FRAMES = 2


def num_audio_embeds(num_frames: int) -> int:
    """Embeddings Qwen2-Audio makes of ``num_frames`` valid mel frames."""
    return (conv_output_len(num_frames) - 2) // 2 + 1


class Qwen2AudioMultiModalProcessor(MultiModalProcessor):
    """Audio clips for :class:`mmcore.models.qwen2_audio.Qwen2AudioModel`.

    Items for ``encode`` are ``{"input_features": float32 [mel_bins, F'], "num_frames": int64}``
    where ``F'`` covers the clip's valid frames plus the frames its convolutions read.
    """

    supported_modalities = ("audio",)

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(self.model_dir)
        self.features = WhisperMelFeatures.from_hf(extractor)
        self.audio_sampling_rate = self.features.sampling_rate
        if self.features.num_mel_bins != hf_config.audio_config.num_mel_bins:
            raise ValueError(
                f"feature extractor makes {self.features.num_mel_bins} mel bins, the audio "
                f"encoder takes {hf_config.audio_config.num_mel_bins}"
            )
        self.audio_token_id = int(
            getattr(hf_config, "audio_token_id", None) or hf_config.audio_token_index
        )
        self.max_seconds = self.features.num_samples / self.audio_sampling_rate

    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        return self.audio_token_id

    def _num_frames(self, waveform: np.ndarray) -> int:
        if waveform.size > self.features.num_samples:
            raise ValueError(
                f"audio clip is {waveform.size / self.audio_sampling_rate:.1f} s long; "
                f"{self.hf_config.model_type} takes at most {self.max_seconds:g} s per clip"
            )
        return self.features.num_valid_frames(int(waveform.size))

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        return num_audio_embeds(self._num_frames(np.asarray(item)))

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """For users passing ``{"input_features": [mel_bins, frames], "num_frames": n}``."""
        self.check_modality(modality)
        feats, frames = data.get("input_features"), data.get("num_frames")
        bins = self.features.num_mel_bins
        if feats is None or feats.dim() != 2 or feats.shape[0] != bins:
            raise ValueError(f"input_features must have shape [{bins}, frames]")
        n = int(frames) if frames is not None else int(feats.shape[1])
        if not 0 < n <= min(feats.shape[1], self.features.num_frames):
            raise ValueError(f"num_frames must be in [1, {min(feats.shape[1], 3000)}], got {n}")
        return num_audio_embeds(n)

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """Mel features of all clips in one batched STFT."""
        self.check_modality(modality)
        if not items:
            return []
        mels = self.features(items)
        out = []
        for mel, wave in zip(mels, items, strict=True):
            frames = self._num_frames(np.asarray(wave))
            keep = min(self.features.num_frames, frames + _CONV_CONTEXT_FRAMES)
            out.append(
                {
                    "input_features": mel[:, :keep].clone(),
                    "num_frames": torch.tensor(frames, dtype=torch.int64),
                }
            )
        return out

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """``count`` clips of the full 30 s window (the most embeddings; clips are bounded)."""
        self.check_modality(modality)
        rng = np.random.default_rng(0)
        return [
            (0.01 * rng.standard_normal(self.features.num_samples)).astype(np.float32)
            for _ in range(count)
        ]
