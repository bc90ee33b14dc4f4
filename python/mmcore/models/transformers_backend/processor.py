"""The generic multimodal processor of the Transformers backend: the checkpoint's HF processor.

Each image is processed by ``AutoProcessor`` with a prompt holding only the image token, which
yields both the model's tensors and the exact tokens HF's processor puts in the prompt for it
(``<fake_token_around_image>``, tile and row-break tokens around the embedding positions).
Those tokens become the item's replacement sequence in the C++ core, with an embedding mask set
where the model's image token sits, so chunked prefill, prefix caching keyed by item and the
encoder cache see what native models give them.

The layout depends on the image size only (true of the processors transformers ships), so it is
computed once per size from a blank image of that size and cached; ``process`` checks each real
image's tokens against it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from mmcore.multimodal.hashing import hash_kwargs
from mmcore.multimodal.processor import MultiModalProcessor, image_size

_PROMPT_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}
_DEFAULT_DUMMY_SIDE = 1024
_MAX_LAYOUTS = 256  # layouts kept, one per (image size, settings)


class TransformersMultiModalProcessor(MultiModalProcessor):
    """Images through the checkpoint's own HF processor (``AutoProcessor``).

    Args:
        model_dir: the checkpoint folder (processor files).
        hf_config: the model's config (its ``image_token_id`` / ``image_token_index`` names
            the token whose positions take encoder rows).
        tokenizer: the checkpoint's tokenizer.
        mm_processor_kwargs: keyword arguments of the HF image processor call (e.g.
            ``do_image_splitting``), engine-wide; per request too.

    Raises:
        ValueError: the HF processor cannot be built here (e.g. it needs torchvision).
    """

    def __init__(
        self, model_dir: str, hf_config, tokenizer, mm_processor_kwargs: dict | None = None
    ):
        from transformers import AutoProcessor

        self.supported_modalities = ()
        try:
            self.hf_processor = AutoProcessor.from_pretrained(model_dir)
        except (ImportError, ValueError, OSError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the HF processor of model type {hf_config.model_type!r} cannot be built "
                f"here, so its media cannot be processed: {str(exc).strip().splitlines()[0]}"
            ) from None
        image_processor = getattr(self.hf_processor, "image_processor", None)
        self.image_text = getattr(self.hf_processor, "image_token", None)
        if image_processor is not None and self.image_text is not None:
            self.supported_modalities = ("image",)
            # The image processor's documented call arguments (e.g. do_image_splitting).
            valid = getattr(image_processor, "valid_kwargs", None)
            self.processor_kwargs = frozenset(getattr(valid, "__annotations__", {}))
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        if not self.supported_modalities:
            return
        self._placeholder_id = tokenizer.convert_tokens_to_ids(self.image_text)
        embed_id = getattr(hf_config, "image_token_id", None)
        if embed_id is None:
            embed_id = getattr(hf_config, "image_token_index", None)
        self._embed_id = int(self._placeholder_id if embed_id is None else embed_id)
        # What the tokenizer adds around the bare placeholder (BOS...), stripped from layouts.
        bare = tokenizer(self.image_text)["input_ids"]
        where = bare.index(self._placeholder_id)
        self._strip = (where, len(bare) - where - 1)
        self._layouts: OrderedDict[tuple, tuple] = OrderedDict()  # (size, settings) -> layout
        self._layouts_lock = threading.Lock()  # servers process inputs in worker threads

    # -- per-item layout --------------------------------------------------------------------
    def _call(self, images: list, settings: Mapping | None) -> dict:
        return self.hf_processor(
            text=[self.image_text] * len(images),
            images=[[img] for img in images],
            return_tensors="pt",
            **dict(settings or {}),
        )

    def _tokens(self, input_ids: torch.Tensor) -> tuple[int, ...]:
        ids = input_ids.tolist()
        head, tail = self._strip
        return tuple(ids[head : len(ids) - tail])

    def _compute_layout(self, size: tuple[int, int], settings: Mapping | None) -> tuple:
        from PIL import Image

        blank = Image.new("RGB", (size[1], size[0]), (128, 128, 128))
        out = self._call([blank], settings)
        tokens = self._tokens(out["input_ids"][0])
        mask = tuple(int(t == self._embed_id) for t in tokens)
        return tokens, mask

    def item_layout(self, modality: str, item: Any, kwargs: Mapping | None = None):
        """``(token ids, embed mask)`` HF's processor puts in the prompt for ``item``."""
        self.check_modality(modality)
        size = image_size(item)
        key = (size, hash_kwargs(dict(kwargs or {})))
        with self._layouts_lock:
            layout = self._layouts.get(key)
        if layout is None:
            layout = self._compute_layout(size, kwargs)
            with self._layouts_lock:
                self._layouts[key] = layout
                if len(self._layouts) > _MAX_LAYOUTS:
                    self._layouts.popitem(last=False)
        return layout

    # -- the processor contract -------------------------------------------------------------
    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        return self._placeholder_id

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        """Positions of the model's image token in the item's layout (from its size)."""
        tokens, mask = self.item_layout(modality, item, kwargs)
        count = sum(mask)
        if count == 0:
            raise ValueError(f"the {self.hf_config.model_type} processor gave this image no tokens")
        return count

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        raise ValueError(
            "the Transformers backend takes images, not preprocessed pixel_values: the token "
            "layout HF's processor builds around them is not known from the tensors"
        )

    @property
    def embeds_hidden_size(self) -> int:
        raise ValueError(
            "the Transformers backend takes images, not image_embeds: the token layout HF's "
            "processor builds around them is not known from the embeddings"
        )

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """HF processor tensors per item (each item processed alone: per-item cacheable)."""
        self.check_modality(modality)
        outputs = []
        for item in items:
            out = self._call([item], kwargs)
            expected, _ = self.item_layout(modality, item, kwargs)
            if self._tokens(out["input_ids"][0]) != expected:
                raise RuntimeError(
                    f"the {self.hf_config.model_type} processor's tokens for this image depend "
                    "on its content, not only its size; the Transformers backend cannot lay "
                    "them out ahead of processing"
                )
            outputs.append(
                {
                    k: v
                    for k, v in out.items()
                    if k not in _PROMPT_KEYS and isinstance(v, torch.Tensor)
                }
            )
        return outputs

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """Square images of the largest side the image processor's settings name."""
        from PIL import Image

        self.check_modality(modality)
        side = _largest_side(self.hf_processor.image_processor)
        return [Image.new("RGB", (side, side), (128, 128, 128)) for _ in range(count)]


def _largest_side(image_processor) -> int:
    """The largest pixel size in the image processor's size settings (tiling grids included)."""
    sides = []
    for name in ("size", "crop_size", "max_image_size"):
        value = getattr(image_processor, name, None)
        if isinstance(value, Mapping):
            sides += [v for v in value.values() if isinstance(v, int)]
        elif isinstance(value, int):
            sides.append(value)
    for pinpoint in getattr(image_processor, "image_grid_pinpoints", None) or ():
        sides += list(pinpoint)
    return int(max(sides, default=_DEFAULT_DUMMY_SIDE))
