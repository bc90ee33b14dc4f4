"""KV cache groups: how a hybrid model's layers share the one block pool (vLLM's hybrid KV
cache manager).

A model with both full-attention and sliding-window layers (Gemma 3: 5 sliding : 1 global)
splits its layers into groups of equal size ``S`` (the smallest layer count of one kind), one
attention kind per group, full groups first. The cache holds ``S`` K/V tensors ("layer slots");
layer ``j`` of group ``g`` uses slot ``j`` with group ``g``'s block table, so one block id costs
``S`` layers' worth of memory. Each request holds one block table per group: the full groups
keep every block, a sliding group gives back the blocks its window has left. Gemma-3-12B (48
layers, 8 global): 6 groups of 8 layers; an 8k-token prompt holds 512 + 5 x ~66 block ids of 8
layers instead of 512 block ids of 48 layers.

A model whose layers are all of one kind (or ``disable_hybrid_kv_cache_manager=True``) has one
group of every layer: exactly one block table per request, as without groups.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL_WINDOW = -1


@dataclass(frozen=True)
class KVCacheGroups:
    """The layer layout of the KV cache.

    Attributes:
        windows: per group, -1 (full attention) or its sliding window; group 0 is full.
        layer_group: per layer, its group.
        layer_slot: per layer, the K/V tensor it uses (its index inside its group).
        num_slots: K/V tensors allocated (layers per group).
    """

    windows: tuple[int, ...]
    layer_group: tuple[int, ...]
    layer_slot: tuple[int, ...]
    num_slots: int

    @property
    def num_groups(self) -> int:
        return len(self.windows)

    @property
    def hybrid(self) -> bool:
        """Several groups: sliding groups free their out-of-window blocks."""
        return len(self.windows) > 1


def single_group(num_layers: int) -> KVCacheGroups:
    """Every layer in one full-attention group (one K/V tensor per layer)."""
    return KVCacheGroups((FULL_WINDOW,), (0,) * num_layers, tuple(range(num_layers)), num_layers)


def kv_cache_groups(
    layer_windows: list[int] | None, num_layers: int, hybrid: bool = True
) -> KVCacheGroups:
    """The groups of a model's layers.

    Args:
        layer_windows: per layer, -1 or its sliding window (a model's ``layer_sliding_windows``;
            None: all full attention).
        num_layers: the model's decoder layers.
        hybrid: False keeps one group (``disable_hybrid_kv_cache_manager``).

    Returns:
        One group when the layers are all of one kind (or not ``hybrid``), else full groups
        then sliding groups of ``min(layers of one kind)`` layers each (the last group of a
        kind may have fewer layers: its unused slots cost memory, as in vLLM).
    """
    if layer_windows is None or not hybrid:
        return single_group(num_layers)
    windows = [int(w) if w and w > 0 else FULL_WINDOW for w in layer_windows]
    if len(windows) != num_layers:
        raise ValueError(f"{len(windows)} layer windows for {num_layers} layers")
    kinds = sorted(set(windows))  # -1 (full) sorts first
    if len(kinds) == 1 or kinds[0] != FULL_WINDOW:
        return single_group(num_layers)
    layers_of = {kind: [i for i, w in enumerate(windows) if w == kind] for kind in kinds}
    size = min(len(layers) for layers in layers_of.values())
    group_windows: list[int] = []
    layer_group = [0] * num_layers
    layer_slot = [0] * num_layers
    for kind in kinds:
        layers = layers_of[kind]
        for start in range(0, len(layers), size):
            for slot, layer in enumerate(layers[start : start + size]):
                layer_group[layer] = len(group_windows)
                layer_slot[layer] = slot
            group_windows.append(kind)
    return KVCacheGroups(tuple(group_windows), tuple(layer_group), tuple(layer_slot), size)


def model_kv_groups(model, hybrid: bool = True) -> KVCacheGroups:
    """:func:`kv_cache_groups` of an mmcore model (``layer_sliding_windows`` if it has them)."""
    return kv_cache_groups(getattr(model, "layer_sliding_windows", None), model.num_layers, hybrid)
