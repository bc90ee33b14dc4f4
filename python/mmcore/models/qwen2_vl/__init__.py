"""Qwen2-VL and Qwen2.5-VL: the model (:class:`Qwen2VLModel`) and its processor
(:mod:`mmcore.models.qwen2_vl.processor`), one folder as ``docs/adding_a_model.md`` describes."""

from mmcore.models.qwen2_vl.model import Qwen2VLModel

__all__ = ["Qwen2VLModel"]
