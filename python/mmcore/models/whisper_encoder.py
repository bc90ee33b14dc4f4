"""Whisper's audio encoder (also Qwen2-Audio's): two convolutions, learned positions, pre-norm
transformer layers; the clips of a step packed into one varlen attention call.

Whisper attends over the whole 30 s window (padding included), so its clips are given whole.
Qwen2-Audio masks the padded positions, which makes them irrelevant to the valid ones: its clips
are cut to their valid frames (plus the two the convolutions read past the end), so a 3 s clip
costs a tenth of a padded 30 s window.

With ``tensor_parallel=True`` (Qwen2-Audio) the layers are mmcore's parallel linears: attention
heads and fc1 rows column-parallel, out_proj and fc2 row-parallel (one all-reduce per block);
``disable_tp`` keeps them whole on every rank (``mm_encoder_tp_mode="data"``). Whisper's own
decoder is not parallel, so its encoder keeps plain ``nn.Linear`` layers (one rank, no FP8).
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.layers.activations import get_activation
from mmcore.layers.attention import varlen_attention
from mmcore.layers.linear import ColumnParallelLinear, RowParallelLinear, divide


class _Linears:
    """Builds the encoder's column / row linears: parallel layers, or ``nn.Linear`` (Whisper)."""

    def __init__(self, *, tensor_parallel: bool, disable_tp: bool, dtype, device):
        self.parallel, self.disable_tp = tensor_parallel, disable_tp
        self.dtype, self.device = dtype, device

    def _make(self, layer, in_features: int, out_features: int, bias: bool) -> nn.Module:
        kw = dict(bias=bias, dtype=self.dtype, device=self.device)
        if not self.parallel:
            return nn.Linear(in_features, out_features, **kw)
        return layer(in_features, out_features, disable_tp=self.disable_tp, **kw)

    def column(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self._make(ColumnParallelLinear, in_features, out_features, bias)

    def row(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self._make(RowParallelLinear, in_features, out_features, bias)


class WhisperEncoderAttention(nn.Module):
    """Bidirectional self-attention; k_proj has no bias (as in Whisper). Sharded by heads when
    built from parallel layers (q/k/v column-, out_proj row-parallel)."""

    def __init__(self, config, linears: _Linears):
        super().__init__()
        d = config.d_model
        self.head_dim = d // config.encoder_attention_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = linears.column(d, d)
        self.k_proj = linears.column(d, d, bias=False)
        self.v_proj = linears.column(d, d)
        self.num_heads = divide(self.q_proj.out_features, self.head_dim, "encoder heads")
        self.out_proj = linears.row(d, d)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.num_heads, self.head_dim)
        q = (self.q_proj(x) * self.scaling).view(shape)  # scaled before the product, as HF
        k, v = self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        out = varlen_attention(q, k, v, cu_seqlens, 1.0)
        return self.out_proj(out.reshape(x.shape[0], -1))


class WhisperEncoderLayer(nn.Module):
    def __init__(self, config, linears: _Linears, *, dtype, device):
        super().__init__()
        d = config.d_model
        self.self_attn_layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.self_attn = WhisperEncoderAttention(config, linears)
        self.final_layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.fc1 = linears.column(d, config.encoder_ffn_dim)
        self.fc2 = linears.row(config.encoder_ffn_dim, d)
        self.act = get_activation(config.activation_function)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), cu_seqlens)
        x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as HF: keep fp16 activations finite
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-limit, limit)
        return x


def conv_output_len(num_frames: int) -> int:
    """Encoder positions for ``num_frames`` mel frames (conv2 has stride 2)."""
    return (num_frames - 1) // 2 + 1


class WhisperAudioEncoder(nn.Module):
    """Mel frames -> encoder states, for a list of clips of any lengths (<= the 30 s window).

    Args:
        config: the HF audio encoder config (``WhisperConfig`` or ``Qwen2AudioEncoderConfig``).
        pool: average-pool pairs of positions before the final norm (Qwen2-Audio).
        tensor_parallel: build the layers from mmcore's parallel linears (sharded by heads).
        disable_tp: with ``tensor_parallel``, keep every layer whole on each rank.
    """

    def __init__(
        self,
        config,
        *,
        pool: bool,
        dtype,
        device,
        tensor_parallel: bool = False,
        disable_tp: bool = False,
    ):
        super().__init__()
        linears = _Linears(
            tensor_parallel=tensor_parallel, disable_tp=disable_tp, dtype=dtype, device=device
        )
        d = config.d_model
        self.num_mel_bins = config.num_mel_bins
        self.max_source_positions = config.max_source_positions
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, 3, padding=1, dtype=dtype, device=device)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1, dtype=dtype, device=device)
        self.embed_positions = nn.Embedding(
            config.max_source_positions, d, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(config, linears, dtype=dtype, device=device)
            for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(d, dtype=dtype, device=device)
        self.pool = pool

    def forward(self, mels: list[torch.Tensor], num_positions: list[int]) -> list[torch.Tensor]:
        """Encode clips.

        Args:
            mels: per clip ``[num_mel_bins, F]`` log-mel frames; F must cover the positions kept
                (2 * positions + 1 frames, or the whole window).
            num_positions: encoder positions to keep per clip (before pooling).

        Returns:
            Per clip ``[positions, d_model]`` (``[positions // 2, d_model]`` when pooling).
        """
        dtype = self.conv1.weight.dtype
        states = []
        for mel, keep in zip(mels, num_positions, strict=True):
            if mel.dim() != 2 or mel.shape[0] != self.num_mel_bins:
                raise ValueError(
                    f"expected audio features [{self.num_mel_bins}, frames], got {tuple(mel.shape)}"
                )
            if not 0 < keep <= min(conv_output_len(mel.shape[1]), self.max_source_positions):
                raise ValueError(f"cannot keep {keep} encoder positions of {mel.shape[1]} frames")
            h = nn.functional.gelu(self.conv1(mel.to(dtype)[None]))
            h = nn.functional.gelu(self.conv2(h))[0, :, :keep].T
            states.append(h + self.embed_positions.weight[:keep])  # no embed scale in encoders
        lengths = torch.tensor([0] + list(num_positions), device=states[0].device)
        cu_seqlens = lengths.cumsum(0).to(torch.int32)
        x = torch.cat(states)
        for layer in self.layers:
            x = layer(x, cu_seqlens)
        outs = list(x.split(list(num_positions)))
        if self.pool:  # AvgPool1d(2, 2) over positions; an odd last position is dropped
            outs = [o[: o.shape[0] // 2 * 2].view(-1, 2, o.shape[1]).mean(1) for o in outs]
        return [self.layer_norm(o) for o in outs]
