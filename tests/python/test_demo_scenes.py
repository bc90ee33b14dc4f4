"""The demo's varied training pictures: they cover what users' pictures vary, and every answer holds."""

import math

import numpy as np
import pytest

from mmcore.demo import paint, scenes, shapes


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(11)
    return [scenes.random_picture(rng, 1 + i % 3) for i in range(240)]


def test_colour_ranges_name_their_own_samples_and_do_not_overlap():
    rng = np.random.default_rng(0)
    for name in scenes.COLOUR_RANGES:
        for _ in range(100):
            assert scenes.colour_name(scenes.sample_colour(rng, name)) == name
    # Colours between the ranges are never drawn: magenta, brown, grey.
    assert scenes.colour_name((255, 0, 255)) is None
    assert scenes.colour_name((120, 70, 20)) is None
    assert scenes.colour_name((128, 128, 128)) is None
    # PIL's own named colours land where a user expects.
    assert scenes.colour_name((255, 0, 0)) == "red"
    assert scenes.colour_name((0, 128, 0)) == "green"
    assert scenes.colour_name((128, 0, 128)) == "purple"
    assert scenes.colour_name((255, 192, 203)) == "pink"


def test_pictures_cover_the_variations_users_make(pictures):
    sizes = [2 * it.radius / min(p.image.size) for p in pictures for it in p.items]
    aspects = [p.image.size[0] / p.image.size[1] for p in pictures]
    strokes = [s for p in pictures for s in p.strokes]
    assert {p.background for p in pictures} == set(scenes.BACKGROUNDS)
    assert {s.renderer for s in strokes} == set(paint.RENDERERS)
    assert {s.style for s in strokes} == set(paint.STYLES)
    assert {s.antialias for s in strokes if s.renderer == "sdf"} == {True, False}
    assert {s.antialias for s in strokes if s.renderer == "pil"} == {False}
    assert len({s.width for s in strokes if s.style == "outline"}) >= 4
    assert min(sizes) < 0.1 and max(sizes) > 0.45 and min(sizes) >= 0.079
    assert max(sizes) <= scenes.SIZE_RANGE[1] + 1e-6
    assert min(aspects) < 0.7 and max(aspects) > 1.4 and sum(a == 1.0 for a in aspects) > 60
    assert min(min(p.image.size) for p in pictures) >= 48
    assert max(max(p.image.size) for p in pictures) > 250
    assert 0.15 < np.mean([p.jpeg_quality is not None for p in pictures]) < 0.45
    angles = [abs(it.angle) for p in pictures for it in p.items]
    assert max(angles) > 12 and min(angles) < 2
    assert {it.shape for p in pictures for it in p.items} == set(shapes.SHAPES)
    assert {it.colour for p in pictures for it in p.items} == set(scenes.COLOUR_RANGES)
    assert {it.cell for p in pictures for it in p.items} == set(range(9))


def test_shapes_sit_in_their_thirds_on_the_canvas_and_apart(pictures):
    for picture in pictures:
        width, height = picture.image.size
        items = picture.items
        assert [it.cell for it in items] == sorted({it.cell for it in items})
        assert len({it.shape for it in items}) == len({it.colour for it in items}) == len(items)
        for it in items:
            row, col = divmod(it.cell, 3)
            x, y = it.center
            assert col * width / 3 < x < (col + 1) * width / 3
            assert row * height / 3 < y < (row + 1) * height / 3
            assert it.radius <= x <= width - it.radius and it.radius <= y <= height - it.radius
        for a in items:
            for b in items:
                if a is not b:
                    assert math.dist(a.center, b.center) > a.radius + b.radius


@pytest.mark.parametrize("renderer", paint.RENDERERS)
@pytest.mark.parametrize("kind", shapes.SHAPES)
def test_every_renderer_draws_every_shape_where_it_belongs(renderer, kind):
    rng = np.random.default_rng(3)
    parts = paint.shape_parts(kind, 40.0, 30.0, 14.0, 5.0, rng)
    filled = paint.coverage(parts, paint.Stroke(renderer, "fill", 3, True), 14.0, (80, 60))
    outlined = paint.coverage(parts, paint.Stroke(renderer, "outline", 2, True), 14.0, (80, 60))
    (x0, y0, _, _), cover = filled
    ys, xs = np.nonzero(cover > 0.5)
    assert len(xs) > 60
    # Inside the shape's circle, and roughly centred on it (a crescent leans to one side).
    assert np.hypot(xs + x0 + 0.5 - 40.0, ys + y0 + 0.5 - 30.0).max() <= 14.0 + 1.5
    assert abs(np.mean(xs) + x0 - 40.0) < (7.0 if kind == "crescent" else 3.0)
    assert 0 < outlined[1].sum() < 0.9 * cover.sum()
    assert (outlined[1] <= cover + 0.51).all()  # the stroke lies inside the filled shape
    soft = ((cover > 0.05) & (cover < 0.95)).sum()
    assert (soft > 0) == (renderer != "pil")


def test_shapes_keep_their_colour_and_stand_out_from_the_background():
    rng = np.random.default_rng(5)
    checked, named_right = 0, 0
    while checked < 40:
        picture = scenes.random_picture(rng, 1)
        (item,), (stroke,) = picture.items, picture.strokes
        if picture.jpeg_quality or stroke.style != "fill" or item.shape == "crescent":
            continue
        pixels = np.asarray(picture.image, dtype=np.float32)
        x, y = (int(c) for c in item.center)
        centre = pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)
        # Pixel noise or blur may move a centre pixel off its range, never onto another name.
        assert scenes.colour_name(tuple(int(c) for c in centre)) in (item.colour, None)
        named_right += scenes.colour_name(tuple(int(c) for c in centre)) == item.colour
        corner = pixels[-3:, -3:] if item.cell == 0 else pixels[:3, :3]
        assert np.linalg.norm(centre - corner.reshape(-1, 3).mean(0)) > 30
        checked += 1
    assert named_right >= 30


def test_samples_are_resized_like_the_processor_and_answers_match_the_picture():
    rng = np.random.default_rng(9)
    samples = scenes.make_samples(rng, 3, ["count", "describe", "position"], 112)
    assert [s.qtype for s in samples] == ["count", "describe", "position"]
    assert all(s.image.size == (112, 112) for s in samples)
    assert samples[0].answer == "three" and samples[1].answer.count(" and ") == 1
    assert samples[2].answer in shapes.POSITIONS


def test_held_out_set_is_seeded_and_balanced():
    first = scenes.eval_samples(10, seed=3)
    again = scenes.eval_samples(10, seed=3)
    assert [s.question for s in first] == [s.question for s in again]
    assert np.array_equal(np.asarray(first[4].image), np.asarray(again[4].image))
    assert [s.qtype for s in first[:5]] == list(shapes.QUESTION_TYPES)
    with pytest.raises(ValueError, match="n must be positive"):
        scenes.eval_samples(0, seed=3)
    with pytest.raises(ValueError, match="num_shapes"):
        scenes.random_picture(np.random.default_rng(0), 4)
