"""Whisper's text decoder on mmcore's paged KV cache: learned positions, pre-norm layers with
causal self-attention (paged, as every LM) and cross-attention over the encoder output.

Cross-attention K/V live in the same per-layer caches as self-attention K/V, in blocks the core
allocates per request at admission (its cross block table). The step that admits a request
writes them once from the encoder output; later steps only read them.

Cross-attention is computed with the ordinary :func:`paged_attention` op (CUDA kernel, CPU path
or reference alike): each query token becomes a one-token "sequence" whose keys are its
request's ``cross_seq_len`` encoder positions. A one-token query at the last position of a causal
sequence sees every key, which is exactly non-causal cross-attention; no new kernel is needed.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.layers.activations import get_activation
from mmcore.layers.attention import (
    AttentionMetadata,
    CrossAttentionMetadata,
    paged_attention,
    write_kv,
)


class WhisperDecoderAttention(nn.Module):
    """Multi-head attention with Whisper's projections (k_proj has no bias)."""

    def __init__(self, d_model: int, num_heads: int, *, dtype, device):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(d_model, d_model, dtype=dtype, device=device)
        self.k_proj = nn.Linear(d_model, d_model, bias=False, dtype=dtype, device=device)
        self.v_proj = nn.Linear(d_model, d_model, dtype=dtype, device=device)
        self.out_proj = nn.Linear(d_model, d_model, dtype=dtype, device=device)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_heads, self.head_dim)

    def self_attention(self, x, kv_cache, attn: AttentionMetadata) -> torch.Tensor:
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(x)),
            self._heads(self.v_proj(x)),
        )
        write_kv(k, v, kv_cache, attn)
        out = paged_attention(q, kv_cache, attn, self.scaling)
        return self.out_proj(out.reshape(x.shape[0], -1))

    def cross_attention(self, x, kv_cache, cross: CrossAttentionMetadata) -> torch.Tensor:
        meta = cross.as_attention()
        if cross.fill_states is not None:  # first step of these requests: write their K/V
            states = cross.fill_states
            k, v = self._heads(self.k_proj(states)), self._heads(self.v_proj(states))
            write_kv(k, v, kv_cache, meta)
        q = self._heads(self.q_proj(x))
        out = paged_attention(q, kv_cache, meta, self.scaling)
        return self.out_proj(out.reshape(x.shape[0], -1))


class WhisperDecoderLayer(nn.Module):
    def __init__(self, config, *, dtype, device):
        super().__init__()
        d = config.d_model
        heads = config.decoder_attention_heads
        self.self_attn = WhisperDecoderAttention(d, heads, dtype=dtype, device=device)
        self.self_attn_layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.encoder_attn = WhisperDecoderAttention(d, heads, dtype=dtype, device=device)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim, dtype=dtype, device=device)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d, dtype=dtype, device=device)
        self.final_layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.act = get_activation(config.activation_function)

    def forward(self, x, kv_cache, attn: AttentionMetadata, cross: CrossAttentionMetadata | None):
        x = x + self.self_attn.self_attention(self.self_attn_layer_norm(x), kv_cache, attn)
        if cross is not None:  # None only in memory profiling (no request holds cross blocks)
            x = x + self.encoder_attn.cross_attention(
                self.encoder_attn_layer_norm(x), kv_cache, cross
            )
        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


class WhisperDecoder(nn.Module):
    """Token + learned position embeddings, decoder layers, final norm."""

    def __init__(self, config, *, dtype, device):
        super().__init__()
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d, dtype=dtype, device=device)
        self.embed_positions = nn.Embedding(
            config.max_target_positions, d, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            WhisperDecoderLayer(config, dtype=dtype, device=device)
            for _ in range(config.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)

    def forward(self, inputs_embeds, positions, kv_caches, attn, cross) -> torch.Tensor:
        x = inputs_embeds + self.embed_positions(positions)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, kv_cache, attn, cross)
        return self.layer_norm(x)
