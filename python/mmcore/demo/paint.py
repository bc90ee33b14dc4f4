"""Shape outlines and three ways to rasterise them, for the demo model's varied training pictures.

A shape is a list of :class:`Part` (ellipses and polygons added or cut away, in canvas pixels).
It can be painted by

    "pil"        PIL ``ImageDraw`` straight on the canvas: hard edges, what most scripts do
    "pil_ss"     PIL on a 3x larger mask, shrunk again: anti-aliased edges
    "sdf"        numpy signed distances: anti-aliased or hard edges

and each either filled, outlined (stroke only) or filled with a dark outline. Every point of a
shape lies within ``radius`` of its centre, so callers can lay shapes out by their circles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RENDERERS = ("pil", "pil_ss", "sdf")
STYLES = ("fill", "outline", "fill_outlined")


@dataclass(frozen=True)
class Part:
    """An ellipse ``(cx, cy, rx, ry)`` or a polygon ``((x, y), ...)``, added or cut away."""

    kind: str  # "ellipse" | "polygon"
    geometry: tuple
    add: bool = True


@dataclass(frozen=True)
class Stroke:
    """How a shape is painted: renderer, style, stroke width (canvas px) and anti-aliasing."""

    renderer: str = "pil_ss"
    style: str = "fill"
    width: int = 2
    antialias: bool = True
    outline_rgb: tuple[int, int, int] = (20, 20, 20)


def _turn(points, angle_deg: float):
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _place(points, cx: float, cy: float, radius: float) -> tuple:
    # Scale unit-frame points so that the farthest one lies exactly `radius` from the centre.
    far = max(math.hypot(x, y) for x, y in points)
    return tuple((cx + x * radius / far, cy + y * radius / far) for x, y in points)


def shape_parts(
    kind: str, cx: float, cy: float, radius: float, angle: float, rng: np.random.Generator
) -> list[Part]:
    """The parts of one shape, with a little random variation of its proportions.

    Args:
        kind: one of ``mmcore.demo.shapes.SHAPES``.
        cx, cy: centre in canvas pixels.
        radius: every point lies within this distance of the centre.
        angle: rotation in degrees (shapes keep their upright look within ~15 degrees).
        rng: the random generator.

    Returns:
        The parts, added ones first.
    """
    if kind == "circle":
        squash = float(rng.uniform(0.9, 1.0))
        rx, ry = (radius, radius * squash) if rng.random() < 0.5 else (radius * squash, radius)
        return [Part("ellipse", (cx, cy, rx, ry))]
    if kind == "square":
        half_w, half_h = 1.0, float(rng.uniform(0.88, 1.12))
        pts = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        return [Part("polygon", _place(_turn(pts, angle), cx, cy, radius))]
    if kind == "triangle":
        # Height 0.65-1.15 of the base: from squat through equilateral (0.87) to a user's
        # isosceles triangle that fills its box (1.0).
        height, apex = 2.0 * float(rng.uniform(0.65, 1.15)), float(rng.uniform(-0.7, 0.7))
        pts = [(-1.0, height / 2), (1.0, height / 2), (apex, -height / 2)]
        # Centre the bounding box, then turn (mostly upright, sometimes a quarter or half turn).
        turn = angle + (0.0 if rng.random() < 0.8 else 90.0 * int(rng.integers(1, 4)))
        return [Part("polygon", _place(_turn(pts, turn), cx, cy, radius))]
    if kind == "star":
        inner = float(rng.uniform(0.38, 0.55))
        pts = [
            ((1.0 if k % 2 == 0 else inner) * math.cos(math.radians(-90 + 36 * k)),
             (1.0 if k % 2 == 0 else inner) * math.sin(math.radians(-90 + 36 * k)))
            for k in range(10)
        ]  # fmt: skip
        return [Part("polygon", _place(_turn(pts, angle), cx, cy, radius))]
    if kind == "diamond":
        # A rhombus taller than wide, so that it never looks like a turned square.
        width = float(rng.uniform(0.55, 0.75))
        pts = [(0.0, -1.0), (width, 0.0), (0.0, 1.0), (-width, 0.0)]
        return [Part("polygon", _place(_turn(pts, angle), cx, cy, radius))]
    if kind == "cross":
        w = float(rng.uniform(0.27, 0.42))
        arm = [(w, 1.0), (w, w), (1.0, w), (1.0, -w), (w, -w), (w, -1.0)]
        pts = arm + [(-x, -y) for x, y in arm]
        return [Part("polygon", _place(_turn(pts, angle), cx, cy, radius))]
    if kind == "crescent":
        # The cut circle pokes out of the disc (offset + cut > 1), leaving two horns.
        offset, cut = float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.8, 1.0))
        turn = math.radians(float(rng.uniform(0.0, 360.0)))
        ox, oy = cx + offset * radius * math.cos(turn), cy + offset * radius * math.sin(turn)
        return [
            Part("ellipse", (cx, cy, radius, radius)),
            Part("ellipse", (ox, oy, cut * radius, cut * radius), add=False),
        ]
    raise ValueError(f"unknown shape {kind!r}")


def _bbox(cx: float, cy: float, radius: float, margin: float, width: int, height: int):
    x0, y0 = max(0, int(cx - radius - margin)), max(0, int(cy - radius - margin))
    x1 = min(width, int(math.ceil(cx + radius + margin)) + 1)
    y1 = min(height, int(math.ceil(cy + radius + margin)) + 1)
    return x0, y0, x1, y1


def _shifted(part: Part, dx: float, dy: float, scale: float) -> Part:
    if part.kind == "ellipse":
        cx, cy, rx, ry = part.geometry
        geometry = ((cx - dx) * scale, (cy - dy) * scale, rx * scale, ry * scale)
    else:
        geometry = tuple(((x - dx) * scale, (y - dy) * scale) for x, y in part.geometry)
    return Part(part.kind, geometry, part.add)


def _draw_part(draw: ImageDraw.ImageDraw, part: Part, fill, outline=None, width: int = 0):
    if part.kind == "ellipse":
        cx, cy, rx, ry = part.geometry
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(list(part.geometry), fill=fill, outline=outline, width=width)


def _pil_mask(parts: list[Part], size: tuple[int, int], mode: str, style: str, width: int):
    """Coverage mask of the parts on a (w, h) canvas in mode "1" (hard) or "L"."""
    on = 1 if mode == "1" else 255
    mask = Image.new(mode, size, 0)
    draw = ImageDraw.Draw(mask)
    if style == "outline" and len(parts) == 1:
        _draw_part(draw, parts[0], None, outline=on, width=width)
        return mask
    for part in parts:
        _draw_part(draw, part, on if part.add else 0)
    if style != "outline":
        return mask
    # A cut-out shape (crescent): its stroke is the region within `width` of the outer edge
    # or of the cut, i.e. (outer ring | cut grown by `width`) & region.
    ring = Image.new(mode, size, 0)
    ring_draw = ImageDraw.Draw(ring)
    for part in parts:
        if part.add:
            _draw_part(ring_draw, part, None, outline=on, width=width)
        else:
            cx, cy, rx, ry = part.geometry
            _draw_part(ring_draw, Part("ellipse", (cx, cy, rx + width, ry + width)), on)
    both = np.minimum(np.asarray(mask), np.asarray(ring))
    return Image.fromarray(both.astype(np.uint8) * (255 if mode == "1" else 1), "L").convert(mode)


def silhouette(parts: list[Part], canvas: tuple[int, int], size: int) -> np.ndarray:
    """The filled area of a shape (outlined ones too), as the fraction of each cell it covers.

    Args:
        parts: from :func:`shape_parts`, in canvas pixels.
        canvas: (width, height) of the canvas.
        size: the canvas is squashed to ``size`` x ``size`` cells (as the processor squashes it).

    Returns:
        float32 (size, size) fractions in [0, 1].
    """
    mask = _pil_mask(parts, canvas, "L", "fill", 0)
    small = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, geometry: tuple) -> np.ndarray:
    cx, cy, rx, ry = geometry
    qx, qy = (x - cx) / rx, (y - cy) / ry
    q = np.sqrt(qx * qx + qy * qy) + 1e-6
    grad = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2) / q + 1e-6
    return (q - 1.0) / grad  # first-order distance, exact for circles


def _polygon_sdf(x: np.ndarray, y: np.ndarray, geometry: tuple) -> np.ndarray:
    pts = np.asarray(geometry, dtype=np.float32)
    nxt = np.roll(pts, -1, axis=0)
    px, py = x[..., None], y[..., None]
    ex, ey = nxt[:, 0] - pts[:, 0], nxt[:, 1] - pts[:, 1]
    wx, wy = px - pts[:, 0], py - pts[:, 1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dist = np.sqrt(((wx - ex * t) ** 2 + (wy - ey * t) ** 2).min(axis=-1))
    # Even-odd crossing test along +x for the sign.
    crosses = ((pts[:, 1] > py) != (nxt[:, 1] > py)) & (
        px < (nxt[:, 0] - pts[:, 0]) * (py - pts[:, 1]) / (ey + 1e-12) + pts[:, 0]
    )
    inside = crosses.sum(axis=-1) % 2 == 1
    return np.where(inside, -dist, dist)


def _sdf_coverage(parts, x, y, style: str, width: int, antialias: bool) -> np.ndarray:
    sdf = np.full(x.shape, np.inf, dtype=np.float32)
    for part in parts:
        d = (_ellipse_sdf if part.kind == "ellipse" else _polygon_sdf)(x, y, part.geometry)
        sdf = np.minimum(sdf, d) if part.add else np.maximum(sdf, -d)  # union, then cut-outs
    if style == "outline":
        sdf = np.abs(sdf + width / 2.0) - width / 2.0  # a stroke just inside the edge
    if antialias:
        return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    return (sdf <= 0).astype(np.float32)


def coverage(
    parts: list[Part], stroke: Stroke, radius: float, canvas: tuple[int, int], ss: int = 3
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """How much of each pixel near the shape it covers.

    Args:
        parts: from :func:`shape_parts`.
        stroke: renderer and style (``fill_outlined`` covers like ``fill`` here).
        radius: the shape's radius (bounds the work to its box).
        canvas: (width, height) in pixels.
        ss: supersampling factor of the "pil_ss" renderer.

    Returns:
        ((x0, y0, x1, y1), float32 coverage of that box in [0, 1]).
    """
    style = "outline" if stroke.style == "outline" else "fill"
    cx, cy = _centre(parts)
    x0, y0, x1, y1 = _bbox(cx, cy, radius, 2.0, *canvas)
    size = (x1 - x0, y1 - y0)
    if stroke.renderer == "sdf":
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        cover = _sdf_coverage(parts, xs, ys, style, stroke.width, stroke.antialias)
    elif stroke.renderer == "pil_ss":
        big = [_shifted(p, x0, y0, ss) for p in parts]
        mask = _pil_mask(big, (size[0] * ss, size[1] * ss), "L", style, stroke.width * ss)
        cover = np.asarray(mask.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0
    elif stroke.renderer == "pil":
        local = [_shifted(p, x0, y0, 1) for p in parts]
        mask = _pil_mask(local, size, "1", style, stroke.width)
        cover = np.asarray(mask, dtype=np.float32)
    else:
        raise ValueError(f"unknown renderer {stroke.renderer!r}; expected one of {RENDERERS}")
    return (x0, y0, x1, y1), cover


def _centre(parts: list[Part]) -> tuple[float, float]:
    first = parts[0].geometry
    if parts[0].kind == "ellipse":
        return first[0], first[1]
    xs, ys = zip(*first)
    return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2


def paint(
    canvas: np.ndarray,
    parts: list[Part],
    rgb: tuple[int, int, int],
    stroke: Stroke,
    radius: float,
) -> None:
    """Paint one shape onto a float32 (H, W, 3) canvas in place.

    Args:
        canvas: the picture so far.
        parts: from :func:`shape_parts`.
        rgb: the shape's colour.
        stroke: renderer, style, width and anti-aliasing.
        radius: the shape's radius.
    """
    height, width = canvas.shape[:2]
    box, cover = coverage(parts, stroke, radius, (width, height))
    x0, y0, x1, y1 = box
    region = canvas[y0:y1, x0:x1]
    colour = np.asarray(rgb, dtype=np.float32)
    region += (colour - region) * cover[:, :, None]
    if stroke.style == "fill_outlined":
        line = Stroke(stroke.renderer, "outline", stroke.width, stroke.antialias)
        _, edge = coverage(parts, line, radius, (width, height))
        region += (np.asarray(stroke.outline_rgb, np.float32) - region) * edge[:, :, None]
