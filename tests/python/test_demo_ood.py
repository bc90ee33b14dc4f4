"""The out-of-distribution set: drawn by its own code, labelled right, and answered through Engine."""

import ast
import inspect

import numpy as np
import pytest

from mmcore.demo import evaluate, ood, scenes, shapes


def test_ood_set_is_drawn_without_the_training_generator():
    tree = ast.parse(inspect.getsource(ood))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {alias.name for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert not imported & {"scenes", "paint", "mmcore.demo.scenes", "mmcore.demo.paint"}


def test_every_spelling_of_a_colour_is_in_the_range_training_gives_that_name():
    from PIL import ImageColor

    for name, spellings in ood.COLOUR_SPELLINGS.items():
        for spelling in spellings:
            assert scenes.colour_name(ImageColor.getrgb(spelling)[:3]) == name, spelling


def test_the_issue_case_is_a_group_circles_squares_triangles_on_white_224():
    samples = ood.ood_samples(60, seed=7, groups=("pil_white_224",))
    counts = set()
    for sample in samples:
        pixels = np.asarray(sample.image)
        assert sample.image.size == (224, 224) and sample.group == "pil_white_224"
        assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()
        if sample.qtype == "shape":
            assert sample.answer in ("circle", "square", "triangle")
        if sample.qtype == "count":
            counts.add(sample.answer)
    assert counts == {"one", "two", "three"}
    assert {s.qtype for s in samples} == set(ood.OOD_QUESTION_TYPES)


def test_ood_set_is_seeded_balanced_and_varied():
    samples = ood.ood_samples(48, seed=7)
    again = ood.ood_samples(48, seed=7)
    assert [s.question for s in samples] == [s.question for s in again]
    assert np.array_equal(np.asarray(samples[5].image), np.asarray(again[5].image))
    assert [s.group for s in samples[:3]] == list(ood.GROUPS)
    by_type = {q: sum(s.qtype == q for s in samples) for q in ood.OOD_QUESTION_TYPES}
    assert by_type == {q: 12 for q in ood.OOD_QUESTION_TYPES}
    assert len({s.image.size for s in samples}) >= 4
    assert {s.answer for s in samples if s.qtype == "shape"} <= set(shapes.SHAPES)
    with pytest.raises(ValueError, match="groups"):
        ood.ood_samples(4, groups=("photos",))


@pytest.mark.parametrize("group", ood.GROUPS)
def test_each_shape_is_painted_inside_its_third_and_apart_from_the_others(group):
    rng = np.random.default_rng(4)
    for num_shapes in (1, 2, 3) * 5:
        image, layout = ood._picture(group, rng, num_shapes)
        pixels = np.asarray(image, dtype=np.float32)
        width, height = image.size
        assert len(layout) == num_shapes
        for shape in layout:
            x0, y0, x1, y1 = shape.box
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            row, col = divmod(shape.cell, 3)
            assert col * width / 3 < cx < (col + 1) * width / 3
            assert row * height / 3 < cy < (row + 1) * height / 3
            assert x0 >= 0 and x1 <= width and y0 >= 0 and y1 <= height
            # Its colour is in its box (the crescent's ink is off-centre, so look at the box).
            box = pixels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].reshape(-1, 3)
            near = np.linalg.norm(box - np.asarray(shape.rgb, np.float32), axis=1) < 40
            assert near.mean() > 0.15, (group, shape)
        for a in layout:
            for b in layout:
                if a is not b:
                    apart_x = a.box[2] <= b.box[0] or b.box[2] <= a.box[0]
                    apart_y = a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
                    assert apart_x or apart_y


def test_accuracy_by_group_splits_a_report_per_group():
    samples = ood.ood_samples(12, seed=1)
    right = {id(s.image): s.answer for s in samples}
    report = evaluate.score(samples, lambda ims, qs: [right[id(im)] for im in ims])
    by_group = evaluate.accuracy_by_group(samples, report)
    assert set(by_group) == set(ood.GROUPS)
    assert all(a == 1.0 for accs in by_group.values() for a in accs.values())
    wrong = evaluate.score(samples, lambda ims, qs: ["?"] * len(ims))
    assert all(
        a == 0.0
        for accs in evaluate.accuracy_by_group(samples, wrong).values()
        for a in accs.values()
    )


def test_question_sets_are_named():
    assert all(isinstance(s, ood.OodSample) for s in evaluate.question_set("ood", 3, seed=1))
    assert len(evaluate.question_set("held_out", 2, seed=1)) == 2
    assert len(evaluate.question_set("first_demo", 2, seed=1)) == 2
    with pytest.raises(ValueError, match="unknown question set 'photos'"):
        evaluate.question_set("photos", 2, seed=1)
