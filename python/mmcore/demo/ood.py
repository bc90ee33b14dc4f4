"""An out-of-distribution evaluation set: shape pictures drawn the way a user would draw them.

Nothing here comes from the training generator (:mod:`mmcore.demo.scenes`): the pictures are
drawn with PIL's own ``ellipse`` / ``rectangle`` / ``polygon`` calls on named colours, or by a
supersampled point-in-shape rasteriser of its own, on fixed canvases (224 px, 160 px, 320x240,
200x300, 400x300) and backgrounds of their own, with shapes laid out on the thirds of the
picture. Three groups, questions in turn (shape, colour, count, position):

    pil_white_224   circles, squares and triangles via ``ellipse`` / ``rectangle`` /
                    ``polygon`` on a white 224 px canvas, one to three shapes
    pil_varied      all seven shapes (the cross as two rectangles, the crescent as a circle
                    painted over with the background), fills and outlines, other canvases
    numpy_varied    all seven shapes rasterised by 4x4 point sampling on gradients and noise
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from mmcore.demo import shapes

OOD_QUESTION_TYPES = ("shape", "colour", "count", "position")
GROUPS = ("pil_white_224", "pil_varied", "numpy_varied")
# Common ways to spell each colour (PIL/CSS names and hex codes a user might type).
COLOUR_SPELLINGS = {
    "red": ("red", "crimson", "#e41a1c"),
    "orange": ("orange", "darkorange", "#ff7f00"),
    "yellow": ("yellow", "gold", "#ffdd00"),
    "green": ("green", "lime", "forestgreen", "#4daf4a"),
    "blue": ("blue", "royalblue", "mediumblue"),
    "purple": ("purple", "darkviolet", "#984ea3"),
    "pink": ("pink", "hotpink", "lightpink"),
    "white": ("white", "whitesmoke"),
}
_CANVASES = ((160, 160), (320, 240), (200, 300), (400, 300), (256, 256))
_PLAIN_BACKGROUNDS = ("white", "black", "lightgrey", "beige", "#1e1e3c", "#b0c4de")


@dataclass(frozen=True)
class OodSample(shapes.Sample):
    """A sample with the name of the group that drew it."""

    group: str = ""


@dataclass(frozen=True)
class _Shape:
    kind: str
    colour: str  # colour name (the answer)
    rgb: tuple[int, int, int]
    cell: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas pixels


def _layout(rng, kinds: tuple[str, ...], size: tuple[int, int], side_range, background):
    """Shapes on distinct thirds-cells, each centred near its cell's centre, boxes square."""
    width, height = size
    cells = sorted(rng.choice(9, len(kinds), replace=False).tolist())
    names = [n for n in COLOUR_SPELLINGS if _far_from(n, background)]
    colours = rng.choice(len(names), len(kinds), replace=False)
    cell_w, cell_h = width / 3, height / 3
    out = []
    for kind, cell, colour in zip(rng.permutation(kinds), cells, colours):
        row, col = divmod(cell, 3)
        # Several shapes stay inside their cells (boxes at most 0.7 of a cell, 0.24 of jitter).
        limit = 0.7 * min(cell_w, cell_h) if len(kinds) > 1 else min(width, height) * 0.55
        side = min(float(rng.uniform(*side_range)) * min(width, height), limit)
        cx = (col + 0.5) * cell_w + rng.uniform(-0.12, 0.12) * cell_w
        cy = (row + 0.5) * cell_h + rng.uniform(-0.12, 0.12) * cell_h
        cx = min(max(cx, side / 2 + 2), width - side / 2 - 2)
        cy = min(max(cy, side / 2 + 2), height - side / 2 - 2)
        name = names[colour]
        spelling = COLOUR_SPELLINGS[name][int(rng.integers(len(COLOUR_SPELLINGS[name])))]
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        out.append(_Shape(str(kind), name, ImageColor.getrgb(spelling)[:3], cell, box))
    # Crescents first: the circle that cuts them is painted with the background colour.
    return sorted(out, key=lambda shape: shape.kind != "crescent")


def _far_from(name: str, background) -> bool:
    bg = np.asarray(background, np.float32).reshape(-1, 3).mean(0)
    return all(
        np.linalg.norm(np.asarray(ImageColor.getrgb(s)[:3], np.float32) - bg) >= 90
        for s in COLOUR_SPELLINGS[name]
    )


def _star_points(box, points: int = 5, inner: float = 0.45):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [
        (cx + (r if k % 2 == 0 else r * inner) * math.sin(math.pi * k / points),
         cy - (r if k % 2 == 0 else r * inner) * math.cos(math.pi * k / points))
        for k in range(2 * points)
    ]  # fmt: skip


def _pil_draw(draw: ImageDraw.ImageDraw, shape: _Shape, background, outline_width: int) -> None:
    """Draw a shape the way a user's script would, with PIL's primitives."""
    x0, y0, x1, y1 = shape.box
    fill = None if outline_width else shape.rgb
    line = {"outline": shape.rgb, "width": outline_width} if outline_width else {}
    if shape.kind == "circle":
        draw.ellipse(shape.box, fill=fill, **line)
    elif shape.kind == "square":
        draw.rectangle(shape.box, fill=fill, **line)
    elif shape.kind == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill, **line)
    elif shape.kind == "diamond":
        cx, w = (x0 + x1) / 2, (x1 - x0) * 0.32
        draw.polygon([(cx, y0), (cx + w, (y0 + y1) / 2), (cx, y1), (cx - w, (y0 + y1) / 2)], fill=fill, **line)  # fmt: skip
    elif shape.kind == "star":
        draw.polygon(_star_points(shape.box), fill=fill, **line)
    elif shape.kind == "cross":
        t = (x1 - x0) * 0.18  # two filled bars (outlines are drawn as bars too)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - t, y0, cx + t, y1), fill=shape.rgb)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=shape.rgb)
    elif shape.kind == "crescent":
        shift = (x1 - x0) * 0.3
        draw.ellipse(shape.box, fill=shape.rgb)
        draw.ellipse((x0 + shift, y0 - shift * 0.3, x1 + shift, y1 - shift * 0.3), fill=background)
    else:
        raise ValueError(f"unknown shape {shape.kind!r}")


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in the box's unit frame (u, v in [-1, 1], v down)."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if kind == "triangle":
        return (v <= 0.85) & (np.abs(u) <= (v + 0.95) / 1.8 * 1.0)
    if kind == "diamond":
        return np.abs(u) / 0.6 + np.abs(v) <= 1.0
    if kind == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | (
            (np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)
        )
    if kind == "crescent":
        return (u * u + v * v <= 1.0) & ((u + 0.5) ** 2 + (v + 0.2) ** 2 > 0.8)
    if kind == "star":
        # Fold every angle onto one edge, from an inner corner (angle 0, radius 0.42) to a tip
        # (angle pi/5, radius 1): inside is the origin's side of that edge.
        r, angle = np.hypot(u, v), np.arctan2(u, -v)
        fold = np.abs((angle % (2 * math.pi / 5)) - math.pi / 5)
        x, y = r * np.cos(fold), r * np.sin(fold)
        qx, px, py = 0.42, math.cos(math.pi / 5), math.sin(math.pi / 5)
        return (px - qx) * y - py * (x - qx) >= 0
    raise ValueError(f"unknown shape {kind!r}")


def _numpy_draw(img: np.ndarray, shape: _Shape) -> None:
    """Paint a shape with 4x4 point sampling per pixel (anti-aliased)."""
    x0, y0, x1, y1 = shape.box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    px0, py0 = max(0, int(x0) - 1), max(0, int(y0) - 1)
    px1, py1 = min(img.shape[1], int(x1) + 2), min(img.shape[0], int(y1) + 2)
    offsets = (np.arange(4) + 0.5) / 4
    ys = (np.arange(py0, py1)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(px0, px1)[:, None] + offsets[None, :]).reshape(-1)
    u, v = (xs[None, :] - cx) / half, (ys[:, None] - cy) / half
    hit = _inside(shape.kind, u, v).astype(np.float32)
    cover = hit.reshape(py1 - py0, 4, px1 - px0, 4).mean(axis=(1, 3))[:, :, None]
    region = img[py0:py1, px0:px1]
    region[:] = region * (1 - cover) + np.asarray(shape.rgb, np.float32) * cover


def _picture(group: str, rng: np.random.Generator, num_shapes: int):
    if group == "pil_white_224":
        kinds = tuple(rng.choice(["circle", "square", "triangle"], num_shapes, replace=False))
        layout = _layout(rng, kinds, (224, 224), (0.16, 0.3), (255, 255, 255))
        image = Image.new("RGB", (224, 224), "white")
        draw = ImageDraw.Draw(image)
        for shape in layout:
            _pil_draw(draw, shape, (255, 255, 255), 0)
        return image, layout
    kinds = tuple(rng.choice(shapes.SHAPES, num_shapes, replace=False))
    size = _CANVASES[int(rng.integers(len(_CANVASES)))]
    if group == "pil_varied":
        background = ImageColor.getrgb(
            _PLAIN_BACKGROUNDS[int(rng.integers(len(_PLAIN_BACKGROUNDS)))]
        )
        layout = _layout(rng, kinds, size, (0.12, 0.3), background)
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        for shape in layout:
            outline = (
                int(rng.choice([0, 0, 4, 6])) if shape.kind not in ("cross", "crescent") else 0
            )
            _pil_draw(draw, shape, background, outline)
        return image, layout
    if group == "numpy_varied":
        width, height = size
        top = np.asarray(
            ImageColor.getrgb(str(rng.choice(["white", "lightyellow", "black", "slategray"]))),
            np.float32,
        )
        bottom = top * 0.6 + 40.0
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        img = np.broadcast_to(top + (bottom - top) * t, (height, width, 3)).copy()
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        layout = _layout(rng, kinds, size, (0.12, 0.3), img)
        for shape in layout:
            _numpy_draw(img, shape)
        return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB"), layout
    raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")


def _question(layout: list[_Shape], qtype: str, rng) -> tuple[str, str]:
    items = [
        shapes.ShapeItem(s.kind, s.colour, s.cell, ((s.box[0] + s.box[2]) / 2, (s.box[1] + s.box[3]) / 2), (s.box[2] - s.box[0]) / 2, 0.0)
        for s in layout
    ]  # fmt: skip
    return shapes.question_answer(items, qtype, rng)


def ood_samples(n: int, seed: int = 7, groups: tuple[str, ...] = GROUPS) -> list[OodSample]:
    """The out-of-distribution set: ``n`` questions over ``groups`` and question types in turn.

    Args:
        n: number of questions.
        seed: seed of the set.
        groups: which of ``GROUPS`` to draw from (in turn).

    Returns:
        ``n`` samples at their canvas sizes.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    unknown = set(groups) - set(GROUPS)
    if unknown or not groups:
        raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {groups}")
    rng = np.random.default_rng([seed, 0x00D])
    out = []
    for i in range(n):
        group = groups[i % len(groups)]
        qtype = OOD_QUESTION_TYPES[(i // len(groups)) % len(OOD_QUESTION_TYPES)]
        image, layout = _picture(group, rng, int(rng.integers(1, shapes.MAX_SHAPES + 1)))
        question, answer = _question(layout, qtype, rng)
        out.append(OodSample(image, question, answer, qtype, group=group))
    return out
