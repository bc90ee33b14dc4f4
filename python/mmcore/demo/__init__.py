"""The demo model: a small LLaVA trained on synthetic shapes pictures, shipped with mmcore.

It answers questions such as "What colour is the star?" about pictures of one to three shapes,
drawn in many ways for training (:mod:`mmcore.demo.scenes`) and checked on pictures drawn the way
users draw them (:mod:`mmcore.demo.ood`), so a first command can run a real model on a real
picture without a model hub, and its accuracy (:mod:`mmcore.demo.evaluate`) is an end-to-end
check of image embeddings, positions and caches. See docs/demo_model.md.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

# The name the demo model is served and asked for by (``/v1/models``, a request's "model",
# ``mmcore serve mmcore-demo``), instead of its install path.
DEMO_MODEL_NAME = "mmcore-demo"

# example.png is shapes.render(shapes.random_items(rng, 3), rng) with
# rng = numpy.random.default_rng(EXAMPLE_SEED); these are its questions and right answers.
EXAMPLE_SEED = (21, 77)
EXAMPLE_QUESTIONS: dict[str, str] = {
    "Describe the image.": "an orange triangle, a purple star and a green circle",
    "How many shapes are there?": "three",
    "What colour is the star?": "purple",
    "What shape is the orange one?": "triangle",
    "Where is the circle?": "bottom left",
}


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


__all__ = [
    "DEMO_MODEL_NAME",
    "EXAMPLE_QUESTIONS",
    "EXAMPLE_SEED",
    "default_model_path",
    "example_image_path",
]
