"""The demo model: a small LLaVA trained on synthetic shapes pictures, shipped with mmcore.

It answers questions such as "What colour is the star?" about pictures drawn by
:mod:`mmcore.demo.shapes`, so a first command can run a real model on a real picture without a
model hub, and its held-out accuracy (:mod:`mmcore.demo.evaluate`) is an end-to-end check of
image embeddings, positions and caches.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

# Questions about example.png and the answers the shipped model gives (and must give).
EXAMPLE_QUESTIONS: dict[str, str] = {}


def default_model_path() -> Path:
    """Return the folder of the bundled demo checkpoint (a Hugging Face LLaVA checkpoint).

    Returns:
        The path of ``mmcore/demo/checkpoint``.

    Raises:
        FileNotFoundError: when the checkpoint is missing from this installation.
    """
    path = _HERE / "checkpoint"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the demo checkpoint is missing: no config.json in {path}")
    return path


def example_image_path() -> Path:
    """Return the path of the bundled example picture ``mmcore/demo/example.png``."""
    return _HERE / "example.png"


__all__ = ["EXAMPLE_QUESTIONS", "default_model_path", "example_image_path"]
