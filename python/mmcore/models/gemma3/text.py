"""Gemma 3's language model over a varlen batch with a paged KV cache.

Differences from Llama (``mmcore.models.llama``) that need their own layers here:

- RMSNorm scales by ``1 + weight`` (weights are stored centred on 0);
- q and k are RMS-normed per head before rope (QK-norm);
- four norms per layer: pre- and post-attention, pre- and post-feed-forward; the post-norms
  act on the block output before the residual add;
- queries are scaled by ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``;
- layers are "sliding_attention" (window, local rope base) or "full_attention" (global rope
  base, and the config's rope scaling), from ``config.layer_types``;
- token embeddings are multiplied by ``sqrt(hidden_size)``;
- the MLP is gated GELU-tanh (``hidden_activation``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmcore.layers.activations import get_gated_activation
from mmcore.layers.attention import (
    AttentionMetadata,
    paged_attention,
    rotate_and_write_kv,
    select_op,
)
from mmcore.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from mmcore.layers.rotary import RotaryEmbedding
from mmcore.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from mmcore.models.weights import load_named_weights

SLIDING, FULL = "sliding_attention", "full_attention"


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` (Gemma's zero-centred scale); weight named as in HF.

    With a ``residual`` it first adds it and returns ``(normed, x + residual)`` (one fused
    kernel on CUDA), like :class:`mmcore.layers.norm.RMSNorm`.
    """

    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        scale = (1.0 + self.weight.float()).to(x.dtype)
        if residual is None:
            return select_op("rms_norm", x)(x, scale, self.eps)
        return select_op("fused_add_rms_norm", x)(x, residual, scale, self.eps)


def layer_types(config) -> list[str]:
    """Each layer's attention kind, from ``layer_types`` or the older ``sliding_window_pattern``.

    Raises:
        ValueError: for a kind other than sliding or full attention.
    """
    types = getattr(config, "layer_types", None)
    if types is None:
        pattern = int(getattr(config, "sliding_window_pattern", 6))
        types = [SLIDING if (i + 1) % pattern else FULL for i in range(config.num_hidden_layers)]
    types = list(types)[: config.num_hidden_layers]
    unknown = sorted(set(types) - {SLIDING, FULL})
    if unknown:
        raise ValueError(f"Gemma 3 layer types {unknown} are not supported")
    return types


def rotary_for_layer_type(config, layer_type: str, head_dim: int, *, device, dtype):
    """The rotary layer of one layer kind: its own ``rope_parameters`` entry (base, scaling)."""
    params = config.rope_parameters
    if isinstance(params, dict) and layer_type in params:
        view = copy.copy(config)  # transformers' scaled-rope functions read config.rope_parameters
        view.rope_parameters = dict(params[layer_type])
    else:  # older configs: rope_theta (global) and rope_local_base_freq
        view = copy.copy(config)
        theta = (
            getattr(config, "rope_local_base_freq", 10000.0)
            if layer_type == SLIDING
            else getattr(config, "rope_theta", 1000000.0)
        )
        view.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    return RotaryEmbedding(view, head_dim, device=device, dtype=dtype)


class Gemma3Attention(nn.Module):
    """GQA attention with QK-norm; tensor parallel by heads like ``LlamaAttention``."""

    def __init__(self, config, layer_type: str, *, dtype, device):
        super().__init__()
        total_heads, total_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise ValueError("Gemma 3 attention logit soft-capping is not supported")
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.sliding_window = config.sliding_window if layer_type == SLIDING else -1
        bias = getattr(config, "attention_bias", False)
        h = config.hidden_size
        kw = dict(dtype=dtype, device=device)
        self.qkv_proj = QKVParallelLinear(h, self.head_dim, total_heads, total_kv, bias=bias, **kw)
        self.num_heads = self.qkv_proj.num_local_heads
        self.num_kv_heads = self.qkv_proj.num_local_kv_heads
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, h, bias=bias, **kw)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, **kw)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, **kw)

    def forward(self, hidden, positions, rotary, kv_cache, attn: AttentionMetadata):
        t = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.shard_sizes, dim=-1)
        q = self.q_norm(q.reshape(t * self.num_heads, self.head_dim))
        k = self.k_norm(k.reshape(t * self.num_kv_heads, self.head_dim))
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        q = rotate_and_write_kv(rotary, positions, q, k, v, kv_cache, attn)
        out = paged_attention(q, kv_cache, attn, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(t, -1))


class Gemma3MLP(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))``, gate/up as one column-parallel GEMM."""

    def __init__(self, config, *, dtype, device):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        kw = dict(bias=False, dtype=dtype, device=device)
        self.gate_up_proj = MergedColumnParallelLinear(h, {"gate_proj": i, "up_proj": i}, **kw)
        self.down_proj = RowParallelLinear(i, h, **kw)
        self.act_and_mul = get_gated_activation(config.hidden_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_type: str, *, dtype, device):
        super().__init__()
        self.layer_type = layer_type
        h, eps = config.hidden_size, config.rms_norm_eps
        kw = dict(dtype=dtype, device=device)
        self.input_layernorm = GemmaRMSNorm(h, eps, **kw)
        self.self_attn = Gemma3Attention(config, layer_type, **kw)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps, **kw)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps, **kw)
        self.mlp = Gemma3MLP(config, **kw)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps, **kw)

    def forward(self, hidden, residual, positions, rotary, kv_cache, attn):
        """Returns ``(post-norm MLP output, residual stream)``; the next norm adds them."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, positions, rotary, kv_cache, attn)
        hidden = self.post_attention_layernorm(hidden)
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class Gemma3TextModel(nn.Module):
    """Scaled embedding, decoder layers, final norm (HF ``Gemma3TextModel``; weights alike)."""

    def __init__(self, config, *, dtype, device):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, dtype=dtype, device=device
        )
        # HF multiplies by the scale cast to the weight dtype (bf16 rounds sqrt(3840)).
        self.embed_scale = float(torch.tensor(config.hidden_size**0.5, dtype=dtype))
        self.layer_types = layer_types(config)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, kind, dtype=dtype, device=device)
            for kind in self.layer_types
        )
        self.norm = GemmaRMSNorm(
            config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device
        )
        self.rotary = nn.ModuleDict(
            {
                kind: rotary_for_layer_type(
                    config, kind, config.head_dim, device=device, dtype=dtype
                )
                for kind in sorted(set(self.layer_types))
            }
        )

    def forward(self, inputs_embeds, positions, kv_caches, attn: AttentionMetadata):
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"got {len(kv_caches)} KV caches for {len(self.layers)} layers")
        hidden, residual = inputs_embeds, None
        for index, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            rotary = self.rotary[layer.layer_type]
            layer_attn = attn.for_layer(index)  # its KV cache group's block tables
            hidden, residual = layer(hidden, residual, positions, rotary, kv_cache, layer_attn)
        if residual is None:
            return self.norm(hidden)
        return self.norm(hidden, residual)[0]


class Gemma3ForCausalLM(nn.Module):
    """Gemma 3 text LM with its head (HF ``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``),
    also the language model of :class:`mmcore.models.gemma3.Gemma3Model`.

    Args:
        config: the ``Gemma3TextConfig``.
        tie_word_embeddings: None reads the config.
        final_logit_softcapping: cap logits with ``cap * tanh(logits / cap)`` (HF applies the
            config's value in ``Gemma3ForCausalLM`` only, not in the multimodal model).
    """

    supported_modalities: tuple[str, ...] = ()
    supports_tensor_parallel = True

    def __init__(
        self,
        config,
        *,
        dtype: torch.dtype,
        device: torch.device,
        tie_word_embeddings: bool | None = None,
        final_logit_softcapping: float | None = None,
    ):
        super().__init__()
        self.config = config
        self.model = Gemma3TextModel(config, dtype=dtype, device=device)
        if tie_word_embeddings is None:
            tie_word_embeddings = getattr(config, "tie_word_embeddings", True)
        self.tie_word_embeddings = bool(tie_word_embeddings)
        if not self.tie_word_embeddings:
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size, dtype=dtype, device=device
            )
        self.softcap = final_logit_softcapping
        if self.softcap is None and getattr(config, "model_type", "") == "gemma3_text":
            self.softcap = getattr(config, "final_logit_softcapping", None)
        attn0 = self.model.layers[0].self_attn
        self.hidden_size, self.vocab_size = config.hidden_size, config.vocab_size
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads, self.head_dim = attn0.num_kv_heads, attn0.head_dim
        windows = [layer.self_attn.sliding_window for layer in self.model.layers]
        # Layer kinds the engine may read (e.g. for KV memory accounting).
        self.layer_sliding_windows = windows

    def encode(self, modality: str, items: list) -> list[torch.Tensor]:
        """Text-only: any modality is an error."""
        raise ValueError(f"{self.config.model_type} is text-only and does not accept {modality}")

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[T] -> [T, hidden]``, scaled by ``sqrt(hidden)``."""
        return self.model.embed_tokens(input_ids) * self.model.embed_scale

    def forward(self, inputs_embeds, positions, kv_caches, attn) -> torch.Tensor:
        """Final-norm hidden states ``[T, hidden]`` of the step's tokens."""
        return self.model(inputs_embeds, positions, kv_caches, attn)

    def load_weights(self, weights) -> None:
        """Load HF ``Gemma3ForCausalLM`` tensors (``model.*``, ``lm_head.weight``) strictly."""

        def rename(name: str) -> str | None:
            if name == "lm_head.weight" and self.tie_word_embeddings:
                return None
            return name

        load_named_weights(self, weights, rename)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[N, hidden]`` -> float32 logits ``[N, vocab]`` (rank 0 only when tensor parallel)."""
        head = self.model.embed_tokens if self.tie_word_embeddings else self.lm_head
        logits = head.logits(hidden)
        if logits is not None and self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
