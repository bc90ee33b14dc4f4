"""The Transformers backend: any Hugging Face VLM on mmcore's scheduler, KV cache and APIs.

``model_impl="transformers"`` (or ``"auto"`` for a model type without a native
implementation) runs the checkpoint's HF modeling code with its language model's attention
replaced by mmcore's paged attention. See ``docs/transformers_backend.md``.
"""

from mmcore.models.transformers_backend.checks import check_supported, refusal_reason
from mmcore.models.transformers_backend.loader import (
    load_transformers_model,
    processor_class,
    use_transformers_backend,
)

__all__ = [
    "check_supported",
    "load_transformers_model",
    "processor_class",
    "refusal_reason",
    "use_transformers_backend",
]
