"""Whisper (HF ``WhisperForConditionalGeneration``) as an mmcore encoder-decoder model.

The encoder (shared with Qwen2-Audio) turns a 30 s log-mel window into ``max_source_positions``
states; :meth:`WhisperModel.encode` returns them as the item's encoder output. The decoder reads
them through cross-attention K/V that the first decoder step of a request writes into its cross
blocks (see :mod:`mmcore.models.whisper.decoder`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from mmcore.layers.attention import AttentionMetadata
from mmcore.models.weights import load_named_weights
from mmcore.models.whisper.decoder import WhisperDecoder
from mmcore.models.whisper_encoder import WhisperAudioEncoder


class WhisperModel(nn.Module):
    """Items for :meth:`encode`: the processor's ``{"input_features": [mel_bins, 3000]}``.

    ``forward`` takes ``attn.cross`` (:class:`~mmcore.models.whisper.decoder.
    CrossAttentionMetadata`), which the runner builds for encoder-decoder models.
    """

    supported_modalities = ("audio",)
    is_encoder_decoder: ClassVar[bool] = True

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = hf_config
        self.encoder = WhisperAudioEncoder(hf_config, pool=False, dtype=dtype, device=device)
        self.decoder = WhisperDecoder(hf_config, dtype=dtype, device=device)
        # Whisper checkpoints tie the output projection to the token embeddings.
        self.tied = getattr(hf_config, "tie_word_embeddings", True) is not False
        if not self.tied:
            self.proj_out = nn.Linear(
                hf_config.d_model, hf_config.vocab_size, bias=False, dtype=dtype, device=device
            )
        self.num_layers = hf_config.decoder_layers
        self.num_kv_heads = hf_config.decoder_attention_heads
        self.head_dim = hf_config.d_model // hf_config.decoder_attention_heads
        self.hidden_size = hf_config.d_model
        self.vocab_size = hf_config.vocab_size
        self.max_encoder_positions = hf_config.max_source_positions
        self.max_decoder_positions = hf_config.max_target_positions
        self.device = torch.device(device)

    def _module_name(self, name: str) -> str | None:
        if name.startswith("model."):
            name = name[len("model.") :]
        if name == "proj_out.weight" and self.tied:  # the token embeddings (as HF ties them)
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises naming missing/unexpected ones."""
        load_named_weights(self, weights, self._module_name)

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Encoder states ``[max_source_positions, d_model]`` per 30 s window, one packed call."""
        if modality not in self.supported_modalities:
            raise ValueError(f"whisper does not accept {modality} input")
        if not items:
            return []
        mels = [item["input_features"].to(self.device) for item in items]
        return self.encoder(mels, [self.max_encoder_positions] * len(mels))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        return self.decoder(inputs_embeds, positions, kv_caches, attn, attn.cross)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.decoder.embed_tokens.weight if self.tied else self.proj_out.weight
        return (hidden @ weight.T).float()
