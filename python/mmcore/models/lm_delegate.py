"""The language-model half of the model contract for models whose LM is ``self.language_model``
(a :class:`mmcore.models.llama.LlamaForCausalLM` or another LM with the same members)."""

from __future__ import annotations

import torch

from mmcore.layers.attention import AttentionMetadata


class DelegatesToLanguageModel:
    """``embed_tokens`` / ``forward`` / ``compute_logits`` and the cache-sizing attributes of
    :class:`mmcore.models.interfaces.MultiModalModel`, taken from ``self.language_model``.

    List it before ``nn.Module`` in the bases (its ``forward`` must win); call
    :meth:`adopt_language_model_sizes` once ``self.language_model`` is built.
    """

    def adopt_language_model_sizes(self) -> None:
        """``hidden_size``, ``vocab_size``, ``num_layers``, ``num_kv_heads``, ``head_dim``."""
        lm = self.language_model
        self.hidden_size, self.vocab_size = lm.hidden_size, lm.vocab_size
        self.num_layers, self.num_kv_heads, self.head_dim = (
            lm.num_layers,
            lm.num_kv_heads,
            lm.head_dim,
        )

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[T] -> [T, hidden]`` (placeholders get overwritten by the runner)."""
        return self.language_model.embed_tokens(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list,
        attn: AttentionMetadata,
    ) -> torch.Tensor:
        """The LM over the step's flattened tokens; writes their K/V into ``kv_caches``.

        Args:
            inputs_embeds: ``[T, hidden]`` text embeddings with item embeddings scattered in.
            positions: int64 ``[T]`` (or ``[3, T]`` M-RoPE) position of each token.
            kv_caches: per layer the paged K/V caches ``[blocks, block_size, kv_heads, head_dim]``.
            attn: where each request's tokens sit in the caches.

        Returns:
            Final-norm hidden states ``[T, hidden]``.
        """
        return self.language_model(inputs_embeds, positions, kv_caches, attn)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``[N, hidden]`` -> float32 logits ``[N, vocab]`` (None on tensor-parallel ranks > 0)."""
        return self.language_model.compute_logits(hidden)
