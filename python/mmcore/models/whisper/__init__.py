"""Whisper (``model_type`` ``whisper``): encoder-decoder speech recognition and translation."""

from mmcore.models.whisper.model import WhisperModel

__all__ = ["WhisperModel"]
