"""Whisper processor: one audio clip (at most 30 s) -> its log-mel window, the encoder input of
an encoder-decoder request. The decoder prompt carries no placeholder: the audio reaches the
decoder only through cross-attention."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmcore.models.whisper.prompts import WhisperTokens
from mmcore.multimodal.audio_features import WhisperMelFeatures
from mmcore.multimodal.processor import MultiModalProcessor


def _is_multilingual(model_dir: str) -> bool:
    """generation_config.json's ``is_multilingual`` (English-only ``*.en`` checkpoints say
    false); True when absent."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.exists(path):
        return True
    with open(path) as f:
        return json.load(f).get("is_multilingual", True) is not False


class WhisperMultiModalProcessor(MultiModalProcessor):
    """Audio clips for :class:`mmcore.models.whisper.WhisperModel`.

    Items for ``encode`` are ``{"input_features": float32 [mel_bins, 3000]}`` (the whole 30 s
    window: Whisper's encoder attends over the padding too). ``num_embeds`` is the encoder's
    ``max_source_positions``: the cross-attention K/V slots of the request.
    """

    supported_modalities = ("audio",)
    is_encoder_decoder = True

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(self.model_dir)
        self.features = WhisperMelFeatures.from_hf(extractor)
        if self.features.num_mel_bins != hf_config.num_mel_bins:
            raise ValueError(
                f"feature extractor makes {self.features.num_mel_bins} mel bins, the encoder "
                f"takes {hf_config.num_mel_bins}"
            )
        self.audio_sampling_rate = self.features.sampling_rate
        self.window_seconds = self.features.num_samples / self.audio_sampling_rate
        self.tokens = WhisperTokens(tokenizer, multilingual=_is_multilingual(self.model_dir))

    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        raise ValueError(
            "whisper takes no audio placeholder in its prompt: pass the audio as the encoder "
            "prompt, or use Engine.transcribe / POST /v1/audio/transcriptions"
        )

    def default_decoder_prompt(self) -> list[int]:
        """The decoder prompt when none is given: transcribe, no timestamps (language left to
        the model)."""
        return self.tokens.decoder_prompt(None, "transcribe")

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        samples = int(np.asarray(item).size)
        if samples > self.features.num_samples:
            raise ValueError(
                f"audio clip is {samples / self.audio_sampling_rate:.1f} s long; one whisper "
                f"request takes at most {self.window_seconds:g} s (Engine.transcribe and the "
                "transcription endpoints split longer audio)"
            )
        return int(self.hf_config.max_source_positions)

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """For users passing ``{"input_features": [mel_bins, 3000]}``."""
        self.check_modality(modality)
        feats = data.get("input_features")
        shape = (self.features.num_mel_bins, self.features.num_frames)
        if feats is None or tuple(feats.shape) != shape:
            raise ValueError(f"input_features must have shape {list(shape)}")
        return int(self.hf_config.max_source_positions)

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """Mel windows of all clips in one batched STFT."""
        self.check_modality(modality)
        if not items:
            return []
        for item in items:
            self.num_embeds(modality, item)
        mels = self.features(items)
        return [{"input_features": mel.clone()} for mel in mels]

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """``count`` clips of the full 30 s window."""
        self.check_modality(modality)
        rng = np.random.default_rng(0)
        return [
            (0.01 * rng.standard_normal(self.features.num_samples)).astype(np.float32)
            for _ in range(count)
        ]
