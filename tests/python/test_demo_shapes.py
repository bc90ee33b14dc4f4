"""The shapes dataset: every question has exactly one right answer, drawn where it says."""

import numpy as np
import pytest

from mmcore.demo import shapes


def _items(*specs):
    return [
        shapes.ShapeItem(shape=s, colour=c, cell=cell, center=(0.0, 0.0), radius=12.0, angle=0.0)
        for s, c, cell in specs
    ]


@pytest.mark.parametrize("num_shapes", [1, 2, 3])
def test_random_items_are_distinct_in_kind_colour_and_cell(num_shapes):
    rng = np.random.default_rng(num_shapes)
    for _ in range(200):
        items = shapes.random_items(rng, num_shapes)
        assert len(items) == num_shapes
        assert len({i.shape for i in items}) == num_shapes
        assert len({i.colour for i in items}) == num_shapes
        assert [i.cell for i in items] == sorted({i.cell for i in items})
        for it in items:
            row, col = divmod(it.cell, shapes.GRID)
            # The centre stays inside its grid cell, so the position answer is unambiguous.
            assert col * shapes.CELL < it.center[0] < (col + 1) * shapes.CELL
            assert row * shapes.CELL < it.center[1] < (row + 1) * shapes.CELL


@pytest.mark.parametrize("num_shapes", [0, 4])
def test_random_items_rejects_bad_counts(num_shapes):
    with pytest.raises(ValueError, match="num_shapes"):
        shapes.random_items(np.random.default_rng(0), num_shapes)


def test_describe_lists_shapes_in_reading_order_with_articles():
    items = _items(("star", "blue", 7), ("circle", "red", 0), ("square", "orange", 4))
    assert shapes.describe(items) == "a red circle, an orange square and a blue star"
    assert shapes.describe(items[:2]) == "a red circle and a blue star"
    assert shapes.describe(items[2:]) == "an orange square"


def test_answers_match_the_shapes():
    rng = np.random.default_rng(3)
    for _ in range(300):
        items = shapes.random_items(rng, int(rng.integers(1, 4)))
        by_shape = {i.shape: i for i in items}
        by_colour = {i.colour: i for i in items}
        for qtype in shapes.QUESTION_TYPES:
            question, answer = shapes.question_answer(items, qtype, rng)
            if qtype == "colour":
                assert by_shape[question.split()[-1].rstrip("?")].colour == answer
            elif qtype == "position":
                assert shapes.POSITIONS[by_shape[question.split()[-1].rstrip("?")].cell] == answer
            elif qtype == "shape" and len(items) > 1:
                assert by_colour[question.split()[-2]].shape == answer
            elif qtype == "shape":
                assert (question, answer) == ("What shape is this?", items[0].shape)
            elif qtype == "count":
                assert answer == ("one", "two", "three")[len(items) - 1]
            else:
                assert answer == shapes.describe(items)


def test_unknown_question_type_is_an_error():
    items = _items(("star", "blue", 0))
    with pytest.raises(ValueError, match="question type"):
        shapes.question_answer(items, "size", np.random.default_rng(0))


def test_render_paints_each_shape_in_its_colour_over_a_dull_background():
    rng = np.random.default_rng(11)
    for _ in range(50):
        items = shapes.random_items(rng, 3)
        pixels = np.asarray(shapes.render(items, rng), dtype=np.int32)
        assert pixels.shape == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
        for it in items:
            if it.shape == "crescent":  # hollow at its centre
                continue
            x, y = (int(round(c)) for c in it.center)
            expected = np.asarray(shapes.COLOURS[it.colour])
            assert np.abs(pixels[y, x] - expected).max() <= 13, (it, pixels[y, x])
        # The corners are far from any shape centre unless a shape sits in that corner cell.
        occupied = {it.cell for it in items}
        for cell, (y, x) in zip((0, 2, 6, 8), ((1, 1), (1, 94), (94, 1), (94, 94))):
            if cell not in occupied:
                assert pixels[y, x].min() >= 45 and pixels[y, x].max() <= 205


def test_eval_samples_are_reproducible_balanced_and_seed_dependent():
    first, again = shapes.eval_samples(20, seed=5), shapes.eval_samples(20, seed=5)
    assert [(s.question, s.answer) for s in first] == [(s.question, s.answer) for s in again]
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(first, again)
    )
    assert [s.qtype for s in first] == list(shapes.QUESTION_TYPES) * 4
    other = shapes.eval_samples(20, seed=6)
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(other[0].image))
    with pytest.raises(ValueError, match="positive"):
        shapes.eval_samples(0, seed=5)
