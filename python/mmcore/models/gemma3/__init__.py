"""Gemma 3 (``model_type`` ``gemma3``: SigLIP + Gemma 3 LM; ``gemma3_text``: the LM alone)."""

from mmcore.models.gemma3.model import Gemma3Model
from mmcore.models.gemma3.text import Gemma3ForCausalLM

__all__ = ["Gemma3ForCausalLM", "Gemma3Model"]
