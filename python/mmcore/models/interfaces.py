"""The contract between the engine and a model family, as checkable code.

A model class serves one or more HF ``config.model_type`` values (see
:func:`mmcore.multimodal.registry.register_model`); the engine builds it as
``cls(hf_config, dtype=..., device=...)``, fills its weights through :meth:`load_weights` (or
random ones for ``load_format="dummy"``), calls any submodule's optional
``after_weights_loaded()`` (layout changes that need the final weights) and then, per
scheduler step::

    items of new multimodal inputs ──encode()──▶ [num_embeds, hidden] per item (encoder cache)
    step input ids ──embed_tokens()──▶ [T, hidden]
        rows of placeholder tokens overwritten by encoder rows (the core's scatter plan)
    forward(inputs_embeds, positions, kv_caches, attn) ──▶ [T, hidden]
    compute_logits(hidden[rows to sample]) ──▶ float32 [N, vocab]

The guide that walks through writing a family is ``docs/adding_a_model.md``.

Optional capabilities are declared by class attributes and queried with the ``supports_*``
functions below, never guessed from the class name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Protocol, runtime_checkable

import torch

# Members every model has; check_model names the ones a class lacks.
_REQUIRED_METHODS = ("load_weights", "encode", "embed_tokens", "forward", "compute_logits")
_REQUIRED_SIZES = ("num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")


@runtime_checkable
class MultiModalModel(Protocol):
    """What every mmcore model offers (text-only models too: they encode nothing).

    Attributes:
        supported_modalities: modalities :meth:`encode` takes, e.g. ``("image", "video")``;
            ``()`` for a text-only model.
        num_layers: decoder layers, one paged KV cache each.
        num_kv_heads: KV heads per layer (the KV cache's head count).
        head_dim: width of one attention head.
        hidden_size: width of the embeddings that :meth:`encode` returns and the LM takes.
        vocab_size: rows of the logits.

    Optional: ``layer_sliding_windows`` (per decoder layer, -1 or its sliding window): a model
    mixing both kinds gets KV cache groups (``docs/kv_cache.md``); its ``forward`` must then
    give layer ``i`` the metadata ``attn.for_layer(i)``, whose block tables and slot mapping
    are that layer's group's.
    """

    supported_modalities: tuple[str, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raise ValueError naming missing or unexpected ones."""
        ...

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Embeddings of a batch of items of one modality, all in one call.

        Args:
            modality: one of :attr:`supported_modalities`.
            items: the processor's output per item (``MultiModalProcessor.process``), tensors
                already on the model's device. Items of several requests come together: pack
                them (varlen) rather than loop.

        Returns:
            One ``[num_embeds, hidden_size]`` tensor per item, in order, in the model dtype;
            ``num_embeds`` must equal the processor's ``num_embeds`` for that item. Row ``i``
            replaces the embedding of the item's ``i``-th placeholder token.
        """
        ...

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[T] -> [T, hidden_size]`` (placeholder rows get overwritten)."""
        ...

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn,
    ) -> torch.Tensor:
        """The LM over one step's flattened tokens; writes their K/V into ``kv_caches``.

        Args:
            inputs_embeds: ``[T, hidden_size]`` with the encoder rows scattered in.
            positions: int64 ``[T]``; ``[3, T]`` (temporal, height, width rows) for models
                that declare :class:`SupportsMRoPE`. A ``[T]`` tensor must be accepted by
                M-RoPE models too (text-only steps, memory profiling): all rows equal.
            kv_caches: per layer ``(key_cache, value_cache)``, each
                ``[num_blocks, block_size, num_kv_heads, head_dim]`` (with KV cache groups,
                layers of different groups share tensors: each uses its group's tables).
            attn: :class:`mmcore.layers.attention.AttentionMetadata` of the step.

        Returns:
            Final-norm hidden states ``[T, hidden_size]``.
        """
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden_size]`` -> float32 logits ``[N, vocab_size]``."""
        ...


@runtime_checkable
class SupportsMRoPE(Protocol):
    """Capability: the LM rotates queries/keys by 3-row multimodal positions (Qwen2-VL style).

    Such a model's processor implements ``MultiModalProcessor.mrope_positions``; the engine
    hands the core ``[3, prompt_len]`` positions and a delta, and each step the model gets
    ``positions`` of shape ``[3, T]`` (generated token ``i`` sits at ``i + delta`` in all rows).
    """

    uses_mrope: ClassVar[bool]


@runtime_checkable
class SupportsBidirectionalMMSpans(Protocol):
    """Capability: the embeddings of one multimodal item attend to each other both ways
    (Gemma 3's images); everything else stays causal.

    The runner sets ``AttentionMetadata.attend_until`` from the step's scatter plan (each
    contiguous run of an item's embedding rows is one span), and the engine tells the
    scheduler never to end a prefill chunk inside an item (``chunk_inside_mm_items=False``),
    in chunked prefill and in recompute after preemption, so a span is always whole in one
    step. An item must then fit in ``max_num_batched_tokens``.
    """

    bidirectional_mm_spans: ClassVar[bool]


def supports_bidirectional_mm_spans(model) -> bool:
    """True when ``model`` (a class or instance) attends bidirectionally inside items."""
    return getattr(model, "bidirectional_mm_spans", False) is True


class SupportsEncoderDecoder(Protocol):
    """Capability: the decoder cross-attends to an encoder output (Whisper).

    Each request carries one encoder input (its processor sets ``is_encoder_decoder`` too and
    inserts no placeholder). The core encodes it once, in the step of the request's first decoder
    chunk, and holds ``max_encoder_positions`` cross-attention K/V slots for the request in the
    same paged caches as self-attention K/V (its cross blocks). ``forward`` then receives
    ``attn.cross`` (:class:`mmcore.models.whisper.decoder.CrossAttentionMetadata`): the encoder
    outputs whose K/V the step writes, their slots, and each token's cross block table.
    """

    is_encoder_decoder: ClassVar[bool]
    max_encoder_positions: int


def supports_encoder_decoder(model) -> bool:
    """True when ``model`` (a class or instance, model or processor) is encoder-decoder."""
    return getattr(model, "is_encoder_decoder", False) is True


def supports_multimodal(model) -> bool:
    """True when ``model`` (a class or instance) encodes at least one modality."""
    return bool(getattr(model, "supported_modalities", ()))


def supports_mrope(model) -> bool:
    """True when ``model`` (a class or instance) takes M-RoPE ``[3, T]`` positions."""
    return getattr(model, "uses_mrope", False) is True


def check_model(model) -> None:
    """Check that a built model follows :class:`MultiModalModel`.

    Raises:
        TypeError: naming every missing method or size attribute.
    """
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if getattr(type(model), "forward", None) is getattr(torch.nn.Module, "forward", None):
        missing.append("forward")  # nn.Module's placeholder that raises
    missing += [a for a in _REQUIRED_SIZES if not isinstance(getattr(model, a, None), int)]
    if not isinstance(getattr(model, "supported_modalities", None), tuple):
        missing.append("supported_modalities")
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not follow mmcore's model contract "
            f"(mmcore.models.interfaces.MultiModalModel): missing {missing}; "
            "see docs/adding_a_model.md"
        )
