"""Whisper's log-mel features, batched in torch (on the engine's device).

The same computation as HF's ``WhisperFeatureExtractor`` (80 or 128 Slaney mel bins, 25 ms Hann
windows every 10 ms, clips padded or cut to 30 s windows, log10 clamped to 8 below each clip's
maximum, then ``(x + 4) / 4``), written as one vectorised STFT over a batch of clips so a GPU
computes all clips of a step at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank


class WhisperMelFeatures:
    """Log-mel spectrograms of 16 kHz mono clips, as Whisper-family encoders take them.

    Args:
        num_mel_bins: 80 (Whisper up to large-v2) or 128 (large-v3, Qwen2-Audio).
        sampling_rate: Rate of the waveforms, in Hz.
        hop_length: Samples between frames.
        n_fft: FFT size (and Hann window length).
        chunk_length: Seconds of one window; clips are padded / cut to it.
    """

    def __init__(
        self,
        num_mel_bins: int = 80,
        sampling_rate: int = 16000,
        hop_length: int = 160,
        n_fft: int = 400,
        chunk_length: int = 30,
    ):
        self.num_mel_bins = num_mel_bins
        self.sampling_rate = sampling_rate
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.num_samples = chunk_length * sampling_rate
        self.num_frames = self.num_samples // hop_length
        self._filters = _mel_filters(num_mel_bins, n_fft, sampling_rate)

    @classmethod
    def from_hf(cls, feature_extractor) -> WhisperMelFeatures:
        """The features an HF ``WhisperFeatureExtractor`` computes, from its settings."""
        return cls(
            num_mel_bins=feature_extractor.feature_size,
            sampling_rate=feature_extractor.sampling_rate,
            hop_length=feature_extractor.hop_length,
            n_fft=feature_extractor.n_fft,
            chunk_length=feature_extractor.chunk_length,
        )

    def num_valid_frames(self, num_samples: int) -> int:
        """Frames that hold signal for a clip of ``num_samples`` (HF's attention-mask sum)."""
        return min(-(-num_samples // self.hop_length), self.num_frames)

    def __call__(
        self, waveforms: Sequence[np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Features of a batch of clips.

        Args:
            waveforms: 1-D float waveforms at ``sampling_rate`` (any lengths; longer than the
                window are cut, as HF's extractor does with ``truncation=True``).
            device: Where to compute.

        Returns:
            float32 tensor ``(len(waveforms), num_mel_bins, num_frames)`` on ``device``.
        """
        if len(waveforms) == 0:
            raise ValueError("no audio clips to compute features of")
        batch = torch.zeros(len(waveforms), self.num_samples, dtype=torch.float32, device=device)
        for i, wave in enumerate(waveforms):
            wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)[: self.num_samples]
            batch[i, : wave.numel()] = wave.to(device, non_blocking=True)
        window = torch.hann_window(self.n_fft, device=device)
        stft = torch.stft(batch, self.n_fft, self.hop_length, window=window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()  # the last frame is dropped, as HF does
        mel = self._filters.to(device).T @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        clip_max = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, clip_max - 8.0)
        return (log_spec + 4.0) / 4.0


@lru_cache(maxsize=8)
def _mel_filters(num_mel_bins: int, n_fft: int, sampling_rate: int) -> torch.Tensor:
    filters = mel_filter_bank(
        num_frequency_bins=1 + n_fft // 2,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(filters, dtype=np.float32))
