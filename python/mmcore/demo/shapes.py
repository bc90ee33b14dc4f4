"""Synthetic shapes pictures and the questions the demo model learns to answer about them.

A picture is a 3x3 grid of cells on a tinted, shaded, noisy background; one to three shapes sit
in distinct cells, each with a distinct shape kind and a distinct colour, so every question below
has exactly one right answer:

    shape     "What shape is this?" (one shape) / "What shape is the red one?"  -> "circle"
    colour    "What colour is the circle?"                                      -> "red"
    count     "How many shapes are there?"                                      -> "two"
    position  "Where is the circle?"                                            -> "top left"
    describe  "Describe the image."                  -> "a red circle and an orange star"

The description lists the shapes in reading order (cells row by row, left to right).
Only numpy and Pillow are used, so the generator runs in data-loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
GRID = 3
CELL = IMAGE_SIZE / GRID

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "crescent")
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 225),
    "purple": (140, 60, 190),
    "pink": (245, 130, 200),
    "white": (245, 245, 245),
}
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
COUNT_WORDS = ("zero", "one", "two", "three")
QUESTION_TYPES = ("shape", "colour", "count", "position", "describe")
MAX_SHAPES = 3

# Shape half-size in pixels (about 11-14% of the picture, 2.6-3.9 patches of 8 px across).
_MIN_RADIUS, _MAX_RADIUS = 10.5, 13.5
_COLOUR_JITTER = 12
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class ShapeItem:
    """One shape of a picture."""

    shape: str
    colour: str
    cell: int  # 0..8, row-major over the 3x3 grid
    center: tuple[float, float]  # pixels (x, y)
    radius: float
    angle: float  # degrees


@dataclass(frozen=True)
class Sample:
    """One picture with one question about it and its expected answer."""

    image: Image.Image
    question: str
    answer: str
    qtype: str
    # Training only: per-image-token labels of the picture (:mod:`mmcore.demo.patch_labels`);
    # keyword-only, so that subclasses' positional fields (ood.OodSample's group) stay theirs.
    patch_labels: np.ndarray | None = field(default=None, kw_only=True)


def random_items(rng: np.random.Generator, num_shapes: int) -> list[ShapeItem]:
    """Draw ``num_shapes`` shapes with distinct kinds, colours and cells.

    Args:
        rng: the random generator.
        num_shapes: 1..MAX_SHAPES.

    Returns:
        The shapes in reading order (by cell).
    """
    if not 1 <= num_shapes <= MAX_SHAPES:
        raise ValueError(f"num_shapes must be in 1..{MAX_SHAPES}, got {num_shapes}")
    kinds = rng.choice(len(SHAPES), num_shapes, replace=False)
    colours = rng.choice(len(COLOURS), num_shapes, replace=False)
    cells = sorted(rng.choice(GRID * GRID, num_shapes, replace=False).tolist())
    colour_names = list(COLOURS)
    items = []
    for kind, colour, cell in zip(kinds, colours, cells):
        radius = float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS))
        jitter = max(0.0, CELL / 2 - 1.0 - 1.15 * radius)
        row, col = divmod(cell, GRID)
        cx = (col + 0.5) * CELL + rng.uniform(-jitter, jitter)
        cy = (row + 0.5) * CELL + rng.uniform(-jitter, jitter)
        items.append(
            ShapeItem(
                shape=SHAPES[kind],
                colour=colour_names[colour],
                cell=cell,
                center=(float(cx), float(cy)),
                radius=radius,
                angle=float(rng.uniform(-10.0, 10.0)),
            )
        )
    return items


def _polygon(cx: float, cy: float, radii: list[float], angles: list[float]) -> list[tuple]:
    return [
        (cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
        for r, a in zip(radii, angles)
    ]


def _draw_mask(item: ShapeItem, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage mask of one shape, float32 in [0, 1], IMAGE_SIZE square."""
    s = _SUPERSAMPLE
    mask = Image.new("L", (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r, a = item.center[0] * s, item.center[1] * s, item.radius * s, item.angle
    if item.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif item.shape == "square":
        draw.polygon(_polygon(cx, cy, [1.2 * r] * 4, [45 + a + 90 * k for k in range(4)]), 255)
    elif item.shape == "diamond":
        # A rhombus taller than wide, so that it never looks like a turned square.
        pts = _polygon(cx, cy, [1.15 * r] * 4, [90 * k for k in range(4)])
        pts = [(cx + 0.7 * (x - cx), y) for x, y in pts]
        ca, sa = math.cos(math.radians(a)), math.sin(math.radians(a))
        pts = [
            (cx + (x - cx) * ca - (y - cy) * sa, cy + (x - cx) * sa + (y - cy) * ca) for x, y in pts
        ]
        draw.polygon(pts, 255)
    elif item.shape == "triangle":
        draw.polygon(
            _polygon(cx, cy + 0.15 * r, [1.2 * r] * 3, [-90 + a + 120 * k for k in range(3)]), 255
        )
    elif item.shape == "star":
        radii = [1.2 * r if k % 2 == 0 else 0.5 * r for k in range(10)]
        draw.polygon(_polygon(cx, cy, radii, [-90 + a + 36 * k for k in range(10)]), 255)
    elif item.shape == "cross":
        w, length = 0.36 * r, 1.1 * r
        outline = [(w, length), (w, w), (length, w), (length, -w), (w, -w), (w, -length)]
        outline += [(-x, -y) for x, y in outline]
        radii = [math.hypot(x, y) for x, y in outline]
        angles = [math.degrees(math.atan2(y, x)) + a for x, y in outline]
        draw.polygon(_polygon(cx, cy, radii, angles), 255)
    elif item.shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        turn = math.radians(float(rng.uniform(0, 360)))
        ox, oy = cx + 0.55 * r * math.cos(turn), cy + 0.55 * r * math.sin(turn)
        draw.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r), fill=0)
    else:
        raise ValueError(f"unknown shape {item.shape!r}")
    small = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation, mid-grey background with a linear shade and pixel noise."""
    base = rng.uniform(70, 165) + rng.uniform(-15, 15, size=3)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
    shade = math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]
    img = (
        base.astype(np.float32)[None, None, :] + np.float32(rng.uniform(0, 22)) * shade[:, :, None]
    )
    img += np.float32(rng.uniform(0, 7)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 45, 205, out=img)


def render(items: list[ShapeItem], rng: np.random.Generator) -> Image.Image:
    """Paint the shapes on a random background.

    Args:
        items: shapes from :func:`random_items`.
        rng: the random generator (background, colour jitter, crescent turn).

    Returns:
        An RGB image of IMAGE_SIZE x IMAGE_SIZE pixels.
    """
    return render_with_masks(items, rng)[0]


def render_with_masks(
    items: list[ShapeItem], rng: np.random.Generator
) -> tuple[Image.Image, list[np.ndarray]]:
    """:func:`render`, also returning each shape's coverage mask (what training labels use).

    Args:
        items: shapes from :func:`random_items`.
        rng: the random generator (draws exactly what :func:`render` draws).

    Returns:
        (the picture, one float32 IMAGE_SIZE-square coverage mask in [0, 1] per item).
    """
    img = _background(rng)
    masks = []
    for item in items:
        colour = np.asarray(COLOURS[item.colour], dtype=np.float32)
        colour = np.clip(colour + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3), 0, 255)
        mask = _draw_mask(item, rng)
        masks.append(mask)
        cover = mask[:, :, None]
        # Blend only inside the shape's bounding box (every shape fits within 1.3 radii).
        x0, y0 = (max(0, int(c - 1.3 * item.radius) - 1) for c in item.center)
        x1, y1 = (min(IMAGE_SIZE, int(c + 1.3 * item.radius) + 2) for c in item.center)
        box = (slice(y0, y1), slice(x0, x1))
        img[box] = img[box] * (1.0 - cover[box]) + colour * cover[box]
    return Image.fromarray(np.rint(img).astype(np.uint8), "RGB"), masks


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def describe(items: list[ShapeItem]) -> str:
    """The description answer: 'a red circle, a blue star and an orange square'."""
    parts = [_with_article(f"{it.colour} {it.shape}") for it in sorted(items, key=lambda i: i.cell)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def question_answer(
    items: list[ShapeItem], qtype: str, rng: np.random.Generator
) -> tuple[str, str]:
    """Ask one question of type ``qtype`` about the shapes.

    Args:
        items: the shapes of the picture.
        qtype: one of QUESTION_TYPES.
        rng: picks which shape the question names.

    Returns:
        (question, answer).
    """
    target = items[int(rng.integers(len(items)))]
    if qtype == "shape":
        if len(items) == 1:
            return "What shape is this?", target.shape
        return f"What shape is the {target.colour} one?", target.shape
    if qtype == "colour":
        return f"What colour is the {target.shape}?", target.colour
    if qtype == "count":
        return "How many shapes are there?", COUNT_WORDS[len(items)]
    if qtype == "position":
        return f"Where is the {target.shape}?", POSITIONS[target.cell]
    if qtype == "describe":
        return "Describe the image.", describe(items)
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def make_sample(rng: np.random.Generator, qtype: str, num_shapes: int) -> Sample:
    """Draw one picture with ``num_shapes`` shapes and one question of type ``qtype``."""
    items = random_items(rng, num_shapes)
    image = render(items, rng)
    question, answer = question_answer(items, qtype, rng)
    return Sample(image=image, question=question, answer=answer, qtype=qtype)


def eval_samples(n: int, seed: int) -> list[Sample]:
    """A fixed evaluation set: question types in turn, one to three shapes drawn uniformly.

    Args:
        n: number of questions (split as evenly as possible over QUESTION_TYPES).
        seed: seed of the set; use one the training never used.

    Returns:
        ``n`` samples.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng([seed, 0xE7A1])
    return [
        make_sample(
            rng, QUESTION_TYPES[i % len(QUESTION_TYPES)], int(rng.integers(1, MAX_SHAPES + 1))
        )
        for i in range(n)
    ]


def corpus_texts() -> list[str]:
    """Every word the questions and answers use, in sentences, for training the tokenizer."""
    rng = np.random.default_rng(0)
    texts = list(SHAPES) + list(COLOURS) + list(POSITIONS) + list(COUNT_WORDS)
    for _ in range(3000):
        items = random_items(rng, int(rng.integers(1, MAX_SHAPES + 1)))
        for qtype in QUESTION_TYPES:
            question, answer = question_answer(items, qtype, rng)
            texts.append(f"USER: {question} ASSISTANT: {answer}")
    return texts
