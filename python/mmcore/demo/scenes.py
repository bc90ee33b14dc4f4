"""Varied training pictures: what a user's picture of shapes varies, drawn at random.

Every picture varies the canvas (64-320 px on the long side, aspect 1:2 to 2:1), the background
(white, black, grey, tinted, coloured, gradients, texture, noise, the original shaded grey), the
renderer (PIL hard edges, PIL supersampled, numpy signed distances with and without
anti-aliasing), fills and outlines of several stroke widths, shape sizes from 8% of the longer
side to 60% of the shorter side, positions within the thirds of the picture, slight rotation,
colours from a range around each colour name, and afterwards JPEG artefacts, blur and noise. Questions and
answers are those of :mod:`mmcore.demo.shapes` (same vocabulary), so one model answers both.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from mmcore.demo import paint, patch_labels, shapes

# Hue (degrees), saturation and value ranges that each colour name covers; the gaps between
# them (e.g. magenta, brown, dark orange) are never drawn, so every picture has one right name.
COLOUR_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-12.0, 8.0), (0.75, 1.0), (0.65, 1.0)),
    "orange": ((19.0, 40.0), (0.8, 1.0), (0.85, 1.0)),
    "yellow": ((48.0, 62.0), (0.7, 1.0), (0.85, 1.0)),
    "green": ((90.0, 150.0), (0.55, 1.0), (0.45, 1.0)),
    "blue": ((205.0, 242.0), (0.6, 1.0), (0.5, 1.0)),
    "purple": ((262.0, 302.0), (0.5, 1.0), (0.4, 0.85)),
    "pink": ((320.0, 355.0), (0.22, 0.62), (0.9, 1.0)),
    "white": ((0.0, 360.0), (0.0, 0.05), (0.93, 1.0)),
}
BACKGROUNDS = (
    "white",
    "black",
    "grey",
    "tint",
    "dark",
    "colour",
    "gradient",
    "radial",
    "texture",
    "classic",
)
_BACKGROUND_WEIGHTS = (0.2, 0.08, 0.1, 0.12, 0.06, 0.06, 0.14, 0.06, 0.08, 0.1)
SIZE_RANGE = (0.08, 0.6)  # shape diameter / longer (low end) and shorter (high end) canvas side
# The smallest shape of the easiest pictures (``ease=1``): the curriculum's start.
EASY_MIN_SIZE = 0.2
_MAX_SIZE = {1: 0.6, 2: 0.44, 3: 0.34}  # by number of shapes, so that they fit apart
_CELL_MARGIN = 0.05  # centres stay this far (fraction of the side) from the thirds' borders
_MIN_CONTRAST = 75.0  # RGB distance between a shape's colour and the background under it
_MIN_DIAMETER_PX = 10.0


@dataclass(frozen=True)
class Picture:
    """A drawn picture with its shapes (canvas pixels) and how it was drawn."""

    image: Image.Image
    items: list[shapes.ShapeItem]
    background: str
    strokes: list[paint.Stroke]
    jpeg_quality: int | None
    parts: list[list[paint.Part]]  # each item's outline, canvas pixels (for training labels)


def sample_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    """A random RGB colour within the range of ``name`` (a key of ``COLOUR_RANGES``)."""
    (h0, h1), (s0, s1), (v0, v1) = COLOUR_RANGES[name]
    h = (rng.uniform(h0, h1) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def colour_name(rgb: tuple[int, int, int]) -> str | None:
    """The colour name whose range holds ``rgb`` (None for colours between the ranges)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    hue = h * 360.0
    for name, ((h0, h1), (s0, s1), (v0, v1)) in COLOUR_RANGES.items():
        # Small tolerances: rounding to 8-bit channels moves a colour a little.
        h0, h1 = h0 - 1.5, h1 + 1.5
        in_hue = h0 <= hue <= h1 or h0 <= hue - 360.0 <= h1
        if in_hue and s0 - 0.01 <= s <= s1 + 0.01 and v0 - 0.01 <= v <= v1 + 0.01:
            return name
    return None


def random_canvas(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): long side log-uniform in 64..320, square half the time, else 1:2..2:1."""
    long_side = math.exp(rng.uniform(math.log(64), math.log(320)))
    aspect = 1.0 if rng.random() < 0.5 else math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    if aspect >= 1.0:
        return int(long_side), max(48, int(long_side / aspect))
    return max(48, int(long_side * aspect)), int(long_side)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _ramp(rng, width: int, height: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    return (math.cos(theta) * xs + math.sin(theta) * ys) * np.float32(0.5) + np.float32(0.5)


def make_background(rng: np.random.Generator, kind: str, width: int, height: int) -> np.ndarray:
    """A float32 (height, width, 3) background of one of ``BACKGROUNDS``."""
    shape = (height, width, 3)
    if kind == "white":
        return np.full(shape, rng.uniform(238, 255), np.float32)
    if kind == "black":
        return np.full(shape, rng.uniform(0, 25), np.float32)
    if kind == "grey":
        return np.full(shape, rng.uniform(60, 200), np.float32)
    if kind == "tint":
        return np.broadcast_to(
            _hsv(rng.random(), rng.uniform(0.04, 0.25), rng.uniform(0.85, 1)), shape
        ).copy()
    if kind == "dark":
        return np.broadcast_to(
            _hsv(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.08, 0.35)), shape
        ).copy()
    if kind == "colour":
        return np.broadcast_to(
            _hsv(rng.random(), rng.uniform(0.3, 0.65), rng.uniform(0.35, 0.75)), shape
        ).copy()
    if kind == "gradient":
        a = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.1, 1))
        b = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.1, 1))
        t = _ramp(rng, width, height)[:, :, None]
        return a + (b - a) * t
    if kind == "radial":
        a = _hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.5, 1))
        b = _hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.05, 0.6))
        ys, xs = np.ogrid[0:height, 0:width]
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        d = np.sqrt(((xs - cx) / width) ** 2 + ((ys - cy) / height) ** 2).astype(np.float32)
        t = np.clip(d / np.float32(rng.uniform(0.6, 1.2)), 0, 1)[:, :, None]
        return a + (b - a) * t
    if kind == "texture":
        # Smooth blotches: a coarse random grid blown up with bicubic interpolation.
        base = _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.9))
        cells = rng.uniform(-1, 1, (int(rng.integers(3, 9)), int(rng.integers(3, 9)))) * 127 + 127
        blot = Image.fromarray(cells.astype(np.uint8), "L").resize((width, height), Image.BICUBIC)
        amp = np.float32(rng.uniform(15, 45) / 127.0)
        return base + (np.asarray(blot, np.float32)[:, :, None] - 127.0) * amp
    if kind == "classic":
        # The first demo's background: mid-grey, a linear shade and pixel noise.
        base = rng.uniform(70, 165) + rng.uniform(-15, 15, size=3)
        shade = (_ramp(rng, width, height) * 2 - 1) * np.float32(rng.uniform(0, 22))
        img = base.astype(np.float32)[None, None, :] + shade[:, :, None]
        return img + np.float32(rng.uniform(0, 7)) * rng.standard_normal(shape, dtype=np.float32)
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")


def _pick(rng: np.random.Generator, cumulative: np.ndarray) -> int:
    # Generator.choice(p=...) costs ~50 us a call; a search in the cumulative weights does not.
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


_RENDERER_CUM = np.cumsum((0.35, 0.3, 0.35))
_STYLE_CUM = np.cumsum((0.6, 0.27, 0.13))
_BACKGROUND_CUM = np.cumsum(_BACKGROUND_WEIGHTS)


def _fits(lo: float, hi: float, rng) -> float | None:
    return float(rng.uniform(lo, hi)) if lo <= hi else None


def layout(
    rng: np.random.Generator, num_shapes: int, width: int, height: int, ease: float = 0.0
) -> list[tuple[int, float, float, float]] | None:
    """Cells, centres and radii (canvas px) of shapes that fit apart; None when none were found.

    ``ease`` (0..1) raises the smallest size from ``SIZE_RANGE[0]`` towards ``EASY_MIN_SIZE``.
    """
    side = min(width, height)
    cells = sorted(rng.choice(9, num_shapes, replace=False).tolist())
    placed: list[tuple[int, float, float, float]] = []
    # At least 8% of the longer side: the squash to a square must not make a shape a sliver.
    smallest = SIZE_RANGE[0] + ease * (EASY_MIN_SIZE - SIZE_RANGE[0])
    lo = max(smallest * max(width, height) / side, _MIN_DIAMETER_PX / side)
    lo = min(lo, 0.9 * _MAX_SIZE[num_shapes]) if ease > 0 else lo  # easy pictures fit any canvas
    for cell in cells:
        row, col = divmod(cell, 3)
        hi = _MAX_SIZE[num_shapes]
        for _ in range(12):
            if lo > hi:
                return None
            # Sizes: uniform, with extra weight on the small end (log-uniform) 40% of the time.
            diameter = (
                rng.uniform(lo, hi)
                if rng.random() < 0.6
                else math.exp(rng.uniform(math.log(lo), math.log(hi)))
            )
            radius = diameter * side / 2
            mx, my = _CELL_MARGIN * width, _CELL_MARGIN * height
            x = _fits(
                max(col * width / 3 + mx, radius + 1),
                min((col + 1) * width / 3 - mx, width - radius - 1),
                rng,
            )
            y = _fits(
                max(row * height / 3 + my, radius + 1),
                min((row + 1) * height / 3 - my, height - radius - 1),
                rng,
            )
            apart = (
                x is not None
                and y is not None
                and all(
                    math.hypot(x - px, y - py) >= radius + pr + 0.03 * side
                    for _, px, py, pr in placed
                )
            )
            if apart:
                placed.append((cell, x, y, radius))
                break
            hi = max(lo, hi * 0.8)
        else:
            return None
    return placed


def random_stroke(
    rng: np.random.Generator,
    radius: float,
    width: int,
    height: int,
    dark_bg: bool,
    ease: float = 0.0,
):
    """Renderer, style and stroke width for one shape (strokes stay >= ~0.9 px at model size).

    With probability ``ease`` the shape is filled (no outline-only or outlined styles).
    """
    renderer = paint.RENDERERS[_pick(rng, _RENDERER_CUM)]
    if renderer == "sdf" and max(width, height) > 256:
        renderer = "pil_ss"  # signed distances cost per pixel; keep them to small canvases
    min_w = max(1, math.ceil(0.9 * max(width, height) / 112))
    stroke_w = max(min_w, int(round(rng.uniform(0.012, 0.06) * min(width, height))))
    style = paint.STYLES[_pick(rng, _STYLE_CUM)]
    model_diameter = 2 * radius * 112 / max(width, height)
    if style != "fill" and (stroke_w > 0.3 * radius or model_diameter < 14):
        style = "fill"  # a stroke around a few pixels hides the shape and its colour
    if (style == "fill_outlined" and dark_bg) or (ease > 0 and rng.random() < ease):
        style = "fill"
    if style == "fill_outlined":
        stroke_w = max(1, min(stroke_w, int(0.15 * radius)))  # a dark rim, not a dark shape
    return paint.Stroke(
        renderer=renderer,
        style=style,
        width=stroke_w,
        antialias=renderer == "pil_ss" or (renderer == "sdf" and rng.random() < 0.5),
        outline_rgb=(int(rng.integers(0, 50)),) * 3,
    )


def _pick_colour(rng, used: set[str], under: np.ndarray) -> tuple[str, tuple[int, int, int]] | None:
    names = [n for n in COLOUR_RANGES if n not in used]
    under_rgb = [float(c) for c in under]
    for i in rng.permutation(len(names)):
        rgb = sample_colour(rng, names[i])
        if math.dist(rgb, under_rgb) >= _MIN_CONTRAST:
            return names[i], rgb
    return None


def _finish(img: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, int | None]:
    if rng.random() < 0.2:
        img += np.float32(rng.uniform(2, 12)) * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0, 255, out=img)
    image = Image.fromarray(img.astype(np.uint8), "RGB")
    if rng.random() < 0.1 and min(image.size) >= 96:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    quality = None
    if rng.random() < 0.3:
        # Blocks of a small canvas grow with the resize: milder compression there.
        quality = int(rng.integers(35 if min(image.size) >= 128 else 60, 91))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image, quality


def random_picture(rng: np.random.Generator, num_shapes: int, ease: float = 0.0) -> Picture:
    """Draw a varied picture of ``num_shapes`` shapes (distinct kinds, colours and cells).

    Args:
        rng: the random generator.
        num_shapes: 1..3.
        ease: 0 (the full variety) to 1 (shapes of at least ``EASY_MIN_SIZE``, all filled):
            the training curriculum starts easy so that the vision tower finds shapes at all.

    Returns:
        The picture at its canvas size with its shapes in reading order.
    """
    if not 1 <= num_shapes <= shapes.MAX_SHAPES:
        raise ValueError(f"num_shapes must be in 1..{shapes.MAX_SHAPES}, got {num_shapes}")
    while True:
        width, height = random_canvas(rng)
        places = layout(rng, num_shapes, width, height, ease)
        if places is None:
            continue
        background = BACKGROUNDS[_pick(rng, _BACKGROUND_CUM)]
        canvas = make_background(rng, background, width, height)
        np.clip(canvas, 0, 255, out=canvas)
        kinds = rng.choice(len(shapes.SHAPES), num_shapes, replace=False)
        items, strokes, outlines, used, ok = [], [], [], set(), True
        for (cell, cx, cy, radius), kind in zip(places, kinds):
            x0, x1 = int(max(0, cx - radius)), int(min(width, cx + radius + 1))
            y0, y1 = int(max(0, cy - radius)), int(min(height, cy + radius + 1))
            under = canvas[y0:y1, x0:x1].reshape(-1, 3).mean(0)
            picked = _pick_colour(rng, used, under)
            if picked is None:
                ok = False
                break
            name, rgb = picked
            used.add(name)
            angle = float(rng.uniform(-15, 15))
            parts = paint.shape_parts(shapes.SHAPES[kind], cx, cy, radius, angle, rng)
            dark = float(under.mean()) < 70
            stroke = random_stroke(rng, radius, width, height, dark, ease)
            paint.paint(canvas, parts, rgb, stroke, radius)
            items.append(shapes.ShapeItem(shapes.SHAPES[kind], name, cell, (cx, cy), radius, angle))
            strokes.append(stroke)
            outlines.append(parts)
        if ok:
            image, quality = _finish(canvas, rng)
            return Picture(image, items, background, strokes, quality, outlines)


def to_model_size(image: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` as the demo's image processor does (bicubic, no crop)."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC)


def make_samples(
    rng: np.random.Generator,
    num_shapes: int,
    qtypes: list[str],
    size: int,
    ease: float = 0.0,
    label_grid: int = patch_labels.GRID,
) -> list[shapes.Sample]:
    """One varied picture (resized to ``size``) and one question per type in ``qtypes``.

    The samples carry the picture's per-image-token labels (:func:`patch_labels.scene_labels`
    on a ``label_grid`` square of patches).
    """
    picture = random_picture(rng, num_shapes, ease)
    image = to_model_size(picture.image, size)
    labels = patch_labels.scene_labels(picture, label_grid)
    out = []
    for qtype in qtypes:
        question, answer = shapes.question_answer(picture.items, qtype, rng)
        out.append(shapes.Sample(image, question, answer, qtype, patch_labels=labels))
    return out


def eval_samples(n: int, seed: int) -> list[shapes.Sample]:
    """Held-out varied pictures: question types in turn, one to three shapes drawn uniformly.

    Args:
        n: number of questions (split as evenly as possible over ``shapes.QUESTION_TYPES``).
        seed: seed of the set; use one the training never used.

    Returns:
        ``n`` samples at their canvas size (the processor resizes them).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng([seed, 0x5CE2E])
    out = []
    for i in range(n):
        qtype = shapes.QUESTION_TYPES[i % len(shapes.QUESTION_TYPES)]
        picture = random_picture(rng, int(rng.integers(1, shapes.MAX_SHAPES + 1)))
        question, answer = shapes.question_answer(picture.items, qtype, rng)
        out.append(shapes.Sample(picture.image, question, answer, qtype))
    return out
