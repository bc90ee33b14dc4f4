"""What each image token of a training picture shows: which shape, its colour and its third.

The vision tower cuts the model-size picture into GRID x GRID patches, one image token each.
A token's labels are those of the shape whose filled area covers the largest part of its patch
(at least MIN_FRACTION of it; every shape keeps at least its most covered token), else 0 for
the background:

    shape   1 + index in ``shapes.SHAPES``     (0: background)
    colour  1 + index in ``shapes.COLOURS``    (0: background)
    cell    1 + the shape's third (0..8)       (0: background), what "Where is the star?" answers

Training asks a small head (:mod:`mmcore.demo.patch_head`) to read them off the projector's
output, so that every token of a star says "star" to the language model, which can then find
the star that a question names. Only numpy and Pillow: the labels are made in data-loader workers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmcore.demo import build, paint, shapes

GRID = build.IMAGE_SIZE // build.PATCH_SIZE
NUM_TOKENS = GRID * GRID
LABEL_KINDS = ("shape", "colour", "cell")
# Classes per kind, background (0) included.
NUM_CLASSES = (1 + len(shapes.SHAPES), 1 + len(shapes.COLOURS), 1 + len(shapes.POSITIONS))
# A patch belongs to a shape when the shape fills at least this much of it.
MIN_FRACTION = 0.25
_COLOUR_INDEX = {name: i for i, name in enumerate(shapes.COLOURS)}


def labels_from_fractions(fractions: list[np.ndarray], items: list[shapes.ShapeItem]) -> np.ndarray:
    """Token labels from the fraction of each patch that each shape covers.

    Args:
        fractions: one (grid, grid) array per item, in [0, 1].
        items: the shapes, in the same order (at least one).

    Returns:
        int64 (3, grid * grid): shape, colour and cell labels of each token, row-major.
    """
    if not items or len(fractions) != len(items):
        raise ValueError(f"{len(fractions)} coverage maps for {len(items)} shapes")
    cover = np.stack([np.asarray(f, dtype=np.float32).ravel() for f in fractions])
    labels = np.zeros((len(LABEL_KINDS), cover.shape[1]), dtype=np.int64)
    owner = cover.argmax(0)
    owned = cover.max(0) >= MIN_FRACTION
    for i in range(len(items)):
        # A small or thin shape still gets its best-covered token, unless another covers it more.
        best = int(cover[i].argmax())
        if cover[i, best] > 0 and owner[best] == i:
            owned[best] = True
    for i, item in enumerate(items):
        mine = owned & (owner == i)
        labels[0, mine] = 1 + shapes.SHAPES.index(item.shape)
        labels[1, mine] = 1 + _COLOUR_INDEX[item.colour]
        labels[2, mine] = 1 + item.cell
    return labels


def scene_labels(picture, grid: int = GRID) -> np.ndarray:
    """Token labels of a :class:`mmcore.demo.scenes.Picture` (from its shapes' outlines).

    Args:
        picture: a varied picture at its canvas size (the processor squashes it to a square).
        grid: patches per side of the vision tower.

    Returns:
        int64 (3, grid * grid), as :func:`labels_from_fractions`.
    """
    canvas = picture.image.size
    fractions = [paint.silhouette(parts, canvas, grid) for parts in picture.parts]
    return labels_from_fractions(fractions, picture.items)


def first_demo_labels(
    items: list[shapes.ShapeItem], masks: list[np.ndarray], grid: int = GRID
) -> np.ndarray:
    """Token labels of a first-demo picture from :func:`shapes.render_with_masks`'s masks.

    Args:
        items: the picture's shapes.
        masks: their coverage masks at the first demo's size.
        grid: patches per side of the vision tower.

    Returns:
        int64 (3, grid * grid), as :func:`labels_from_fractions`.
    """
    fractions = [
        np.asarray(Image.fromarray(m, "F").resize((grid, grid), Image.Resampling.BOX))
        for m in masks
    ]
    return labels_from_fractions(fractions, items)
