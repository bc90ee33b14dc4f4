"""InternVL 2.5 / 3 in HF format: the model (:class:`InternVLModel`) and its processor
(:mod:`mmcore.models.internvl.processor`), one folder as ``docs/adding_a_model.md`` describes."""

from mmcore.models.internvl.model import InternVLModel

__all__ = ["InternVLModel"]
