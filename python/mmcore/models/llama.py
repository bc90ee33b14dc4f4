"""Llama (and Mistral: Llama + sliding window) decoder over a varlen batch with a paged KV cache."""

from __future__ import annotations

import torch
from torch import nn

from mmcore.kernels.gemv_ops import decode_gate_up_silu
from mmcore.layers.activations import get_gated_activation
from mmcore.layers.attention import AttentionMetadata, paged_attention, rotate_and_write_kv
from mmcore.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from mmcore.layers.norm import RMSNorm
from mmcore.layers.rotary import RotaryEmbedding, rotary_embedding_for
from mmcore.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from mmcore.models.weights import load_named_weights


class LlamaAttention(nn.Module):
    """GQA self-attention: fused q/k/v projection, rope, cache write, paged attention, output
    projection (the checkpoint's q_proj/k_proj/v_proj load as rows of ``qkv_proj``).

    Tensor parallel: each rank runs its share of the heads (``num_heads`` / ``num_kv_heads``
    are this rank's) and ``o_proj`` sums the ranks' outputs (one all-reduce).

    ``qkv_bias`` overrides the config's ``attention_bias`` for q/k/v only (Qwen2: q/k/v biases,
    none on o_proj).
    """

    def __init__(
        self,
        config,
        *,
        dtype: torch.dtype,
        device: torch.device,
        qkv_bias: bool | None = None,
        reduce_results: bool = True,
    ):
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        if total_heads % total_kv_heads:
            raise ValueError(
                f"num_attention_heads {total_heads} is not a multiple of "
                f"num_key_value_heads {total_kv_heads}"
            )
        self.scale = self.head_dim**-0.5
        self.sliding_window = getattr(config, "sliding_window", None) or -1
        bias = getattr(config, "attention_bias", False)
        h = config.hidden_size
        self.qkv_proj = QKVParallelLinear(
            h,
            self.head_dim,
            total_heads,
            total_kv_heads,
            bias=bias if qkv_bias is None else qkv_bias,
            dtype=dtype,
            device=device,
        )
        self.num_heads = self.qkv_proj.num_local_heads
        self.num_kv_heads = self.qkv_proj.num_local_kv_heads
        self.o_proj = RowParallelLinear(
            total_heads * self.head_dim,
            h,
            bias=bias,
            dtype=dtype,
            device=device,
            reduce_results=reduce_results,
        )

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.shard_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q = rotate_and_write_kv(rotary, positions, q, k, v, kv_cache, attn)
        out = paged_attention(q, kv_cache, attn, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(num_tokens, -1))


class LlamaMLP(nn.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))`` with gate and up as one GEMM (``gate_up_proj``);
    tensor parallel, each rank has a share of the intermediate size (one all-reduce in ``down``,
    or none with ``reduce_results=False``: the caller sums the ranks' partial outputs)."""

    def __init__(
        self, config, *, dtype: torch.dtype, device: torch.device, reduce_results: bool = True
    ):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        h, i = config.hidden_size, config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            h, {"gate_proj": i, "up_proj": i}, bias=bias, dtype=dtype, device=device
        )
        self.down_proj = RowParallelLinear(
            i, h, bias=bias, dtype=dtype, device=device, reduce_results=reduce_results
        )
        self.act_and_mul = get_gated_activation(config.hidden_act)
        self._silu = config.hidden_act in ("silu", "swish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._silu and not self.gate_up_proj.is_fp8:
            # A batch-1 decode row: gate_up and SiLU-and-mul as one GEMV (no activation launch).
            gated = decode_gate_up_silu(x, self.gate_up_proj.weight, self.gate_up_proj.bias)
            if gated is not None:
                return self.down_proj(gated)
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, config, *, dtype: torch.dtype, device: torch.device, qkv_bias: bool | None = None
    ):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        # Tensor parallel: o_proj and down_proj return this rank's partial sums and the norm
        # after each reduces them (fused with the residual add and the norm on peer GPUs).
        self.self_attn = LlamaAttention(
            config, dtype=dtype, device=device, qkv_bias=qkv_bias, reduce_results=False
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype=dtype, device=device)
        self.mlp = LlamaMLP(config, dtype=dtype, device=device, reduce_results=False)

    def forward(self, hidden, residual, positions, rotary, kv_cache, attn):
        """Returns ``(mlp output, residual stream)``; the next layer's norm adds them (fused).

        ``residual`` is None for the first layer, whose input is the residual stream itself.
        Under tensor parallelism the returned mlp output is this rank's partial sum: the next
        norm (:meth:`RMSNorm.reduce_add`) reduces it.
        """
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.reduce_add(hidden, residual)
        hidden = self.self_attn(hidden, positions, rotary, kv_cache, attn)
        hidden, residual = self.post_attention_layernorm.reduce_add(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm (HF ``LlamaModel``; weights named alike).

    The rotary layer follows the config: M-RoPE when its rope parameters carry an
    ``mrope_section`` (positions ``[3, T]``), plain rope otherwise.
    """

    def __init__(
        self, config, *, dtype: torch.dtype, device: torch.device, qkv_bias: bool | None = None
    ):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, dtype=dtype, device=device, qkv_bias=qkv_bias)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)
        self.rotary: RotaryEmbedding = rotary_embedding_for(
            config, self.layers[0].self_attn.head_dim, device=device, dtype=dtype
        )

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"got {len(kv_caches)} KV caches for {len(self.layers)} layers")
        hidden, residual = inputs_embeds, None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, positions, self.rotary, kv_cache, attn)
        if residual is None:  # no layers
            return self.norm(hidden)
        return self.norm.reduce_add(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    """Llama LM with its head: the text half of LLaVA-style models, usable on its own.

    Weight names: ``model.*`` and ``lm_head.weight`` (HF ``LlamaForCausalLM``). With tied
    embeddings there is no ``lm_head``: logits use ``embed_tokens.weight``. ``qkv_bias=True``
    with M-RoPE rope parameters makes it Qwen2-VL's language model.
    """

    def __init__(
        self,
        config,
        *,
        dtype: torch.dtype,
        device: torch.device,
        tie_word_embeddings: bool | None = None,
        qkv_bias: bool | None = None,
    ):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, dtype=dtype, device=device, qkv_bias=qkv_bias)
        if tie_word_embeddings is None:  # a wrapping model's config may decide instead
            tie_word_embeddings = getattr(config, "tie_word_embeddings", False)
        self.tie_word_embeddings = bool(tie_word_embeddings)
        if not self.tie_word_embeddings:
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size, dtype=dtype, device=device
            )
        attn0 = self.model.layers[0].self_attn
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = attn0.num_kv_heads
        self.head_dim = attn0.head_dim

    supported_modalities: tuple[str, ...] = ()
    supports_tensor_parallel = True  # built from the tensor-parallel layers

    def encode(self, modality: str, items: list) -> list[torch.Tensor]:
        """A text-only model encodes nothing: any modality is an error."""
        raise ValueError(
            f"{self.config.model_type} is text-only and does not accept {modality} input"
        )

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[T] -> [T, hidden]``."""
        return self.model.embed_tokens(input_ids)

    def forward(self, inputs_embeds, positions, kv_caches, attn) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` of the step's tokens (see ``LlamaModel.forward``)."""
        return self.model(inputs_embeds, positions, kv_caches, attn)

    def load_weights(self, weights) -> None:
        """Load HF ``LlamaForCausalLM`` tensors (``model.*``, ``lm_head.weight``) strictly."""

        def rename(name: str) -> str | None:
            if name.endswith("rotary_emb.inv_freq"):
                return None
            if name == "lm_head.weight" and self.tie_word_embeddings:
                return None
            return name

        load_named_weights(self, weights, rename)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[N, hidden]`` -> float32 logits ``[N, vocab]`` (tensor parallel: on rank 0 only,
        None on the other ranks)."""
        head = self.model.embed_tokens if self.tie_word_embeddings else self.lm_head
        return head.logits(hidden)
