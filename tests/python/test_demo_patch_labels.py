"""Per-image-token training labels of the demo model and the training-only head that uses them."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore.demo import batches, build, paint, patch_head, patch_labels, scenes, shapes

PATCH = build.PATCH_SIZE


def _patch_centres(width: int, height: int) -> np.ndarray:
    """(NUM_TOKENS, 2) centres of the patches in canvas pixels (the canvas squashed to a square)."""
    grid = np.arange(patch_labels.GRID) + 0.5
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    scale = np.array([width, height]) / patch_labels.GRID
    return np.stack([xs.ravel(), ys.ravel()], 1) * scale


def test_tokens_over_a_drawn_square_are_labelled_square_and_the_rest_background():
    canvas = np.full((112, 112, 3), 255.0, np.float32)
    cx, cy, radius = 40.0, 72.0, 28.0
    parts = paint.shape_parts("square", cx, cy, radius, 0.0, np.random.default_rng(0))
    paint.paint(canvas, parts, (200, 30, 30), paint.Stroke("pil", "outline", 2, False), radius)
    item = shapes.ShapeItem("square", "red", 6, (cx, cy), radius, 0.0)
    picture = scenes.Picture(
        Image.fromarray(canvas.astype(np.uint8)), [item], "white", [], None, [parts]
    )
    labels = patch_labels.scene_labels(picture).reshape(3, patch_labels.GRID, patch_labels.GRID)
    # The square's corners lie on the radius: its sides are at least radius * 0.88 / sqrt(2.25)
    # from the centre. Patches wholly inside are the square even though it is only outlined.
    inner = radius * 0.88 / math.sqrt(1 + 1.12**2) - 0.5
    for row in range(patch_labels.GRID):
        for col in range(patch_labels.GRID):
            x0, y0 = col * PATCH, row * PATCH
            inside = abs(x0 - cx) < inner and abs(x0 + PATCH - cx) < inner
            inside = inside and abs(y0 - cy) < inner and abs(y0 + PATCH - cy) < inner
            far = math.hypot(x0 + PATCH / 2 - cx, y0 + PATCH / 2 - cy) > radius + PATCH
            got = labels[:, row, col].tolist()
            if inside:
                assert got == [1 + shapes.SHAPES.index("square"), 1, 1 + 6], (row, col)
            if far:
                assert got == [0, 0, 0], (row, col)
    assert (labels[0] > 0).sum() >= 9


@pytest.mark.parametrize("num_shapes", [1, 2, 3])
def test_every_shape_of_a_varied_picture_owns_the_tokens_over_it(num_shapes):
    rng = np.random.default_rng(10 + num_shapes)
    for _ in range(20):
        picture = scenes.random_picture(rng, num_shapes)
        labels = patch_labels.scene_labels(picture)
        width, height = picture.image.size
        centres = _patch_centres(width, height)
        half_patch = np.hypot(width, height) / patch_labels.GRID / 2
        for item in picture.items:
            mine = labels[0] == 1 + shapes.SHAPES.index(item.shape)
            assert mine.any(), item  # even the smallest shape is seen by one token
            # Its colour and third go with it.
            assert set(labels[1, mine]) == {1 + list(shapes.COLOURS).index(item.colour)}
            assert set(labels[2, mine]) == {1 + item.cell}
            # Every token labelled with it lies over its circle.
            dist = np.hypot(*(centres[mine] - np.asarray(item.center)).T)
            assert (dist <= item.radius + half_patch + 1e-6).all(), item
        # Tokens far from every shape are background.
        near = np.zeros(patch_labels.NUM_TOKENS, bool)
        for item in picture.items:
            near |= np.hypot(*(centres - np.asarray(item.center)).T) <= item.radius + half_patch
        assert (labels[:, ~near] == 0).all()


def test_first_demo_picture_labels_follow_its_shapes():
    rng = np.random.default_rng(3)
    items = shapes.random_items(rng, 3)
    image, masks = shapes.render_with_masks(items, rng)
    labels = patch_labels.first_demo_labels(items, masks)
    centres = _patch_centres(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    pixels = np.asarray(image.resize((112, 112), Image.Resampling.BICUBIC), np.float32)
    for item in items:
        mine = labels[0] == 1 + shapes.SHAPES.index(item.shape)
        assert mine.any()
        dist = np.hypot(*(centres[mine] - np.asarray(item.center)).T)
        assert (dist <= 1.3 * item.radius + 5).all()
        # Each of its patches shows the shape's colour (jitter 12) on a good part of its pixels.
        patches = pixels.reshape(14, 8, 14, 8, 3).transpose(0, 2, 1, 3, 4).reshape(196, 64, 3)
        off = np.linalg.norm(patches[mine] - np.asarray(shapes.COLOURS[item.colour]), axis=2)
        assert ((off < 50).mean(1) >= 0.15).all(), item


def test_render_with_masks_draws_what_render_draws():
    items = shapes.random_items(np.random.default_rng(5), 2)
    plain = shapes.render(items, np.random.default_rng(6))
    with_masks, masks = shapes.render_with_masks(items, np.random.default_rng(6))
    assert np.array_equal(np.asarray(plain), np.asarray(with_masks))
    assert len(masks) == 2 and all(m.shape == (96, 96) and m.max() == 1.0 for m in masks)


def test_batches_carry_one_label_map_per_picture():
    processor = build.build_processor(build.build_tokenizer())
    samples = batches.draw_pictures(np.random.default_rng(7), 6, 2, first_demo_fraction=0.5)
    batch = batches.collate(samples, batches.SequenceEncoder(processor), questions=2)
    assert batch["patch_labels"].shape == (6, 3, patch_labels.NUM_TOKENS)
    assert batch["patch_labels"].dtype == torch.int64
    for i in range(6):
        assert np.array_equal(batch["patch_labels"][i].numpy(), samples[2 * i].patch_labels)
    # Evaluation samples have no labels; their batches have none either.
    plain = [shapes.Sample(s.image, s.question, s.answer, s.qtype) for s in samples[:2]]
    assert "patch_labels" not in batches.collate(plain, batches.SequenceEncoder(processor), 2)


def test_patch_head_learns_labels_the_features_hold():
    torch.manual_seed(0)
    labels = torch.stack(
        [torch.randint(0, n, (4, patch_labels.NUM_TOKENS)) for n in patch_labels.NUM_CLASSES], 1
    )
    # Features that hold the labels (one-hot, concatenated) up to a random rotation.
    onehot = torch.cat(
        [
            torch.nn.functional.one_hot(labels[:, k], n)
            for k, n in enumerate(patch_labels.NUM_CLASSES)
        ],
        -1,
    ).float()
    features = onehot @ torch.randn(onehot.shape[-1], 32)
    head = patch_head.PatchHead(32)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = patch_head.patch_loss(head, features, labels).item()
    assert first == pytest.approx(sum(math.log(n) for n in patch_labels.NUM_CLASSES), rel=0.3)
    for _ in range(200):
        optimizer.zero_grad()
        patch_head.patch_loss(head, features, labels).backward()
        optimizer.step()
    assert patch_head.patch_loss(head, features, labels).item() < 0.05 * first
    assert patch_head.patch_accuracy(head, features, labels) == {
        "shape": 1.0,
        "colour": 1.0,
        "cell": 1.0,
    }


def test_colour_and_third_are_learnt_only_where_a_shape_is():
    torch.manual_seed(1)
    labels = torch.stack(
        [torch.randint(0, n, (2, patch_labels.NUM_TOKENS)) for n in patch_labels.NUM_CLASSES], 1
    )
    features = torch.randn(2, patch_labels.NUM_TOKENS, 16)
    head = patch_head.PatchHead(16)
    loss = patch_head.patch_loss(head, features, labels)
    # Background tokens' colour and third labels do not count; their shape label does.
    background = labels[:, 0] == 0
    relabelled = labels.clone()
    relabelled[:, 1:][background.unsqueeze(1).expand(-1, 2, -1)] = 1
    torch.testing.assert_close(patch_head.patch_loss(head, features, relabelled), loss)
    shape_moved = labels.clone()
    shape_moved[:, 0] = (labels[:, 0] + 1) % patch_labels.NUM_CLASSES[0]
    assert not torch.isclose(patch_head.patch_loss(head, features, shape_moved), loss)


def test_position_embeddings_start_as_sincos_as_loud_as_the_patches():
    from transformers import LlavaForConditionalGeneration

    from mmcore.demo import position_init

    table = position_init.sincos_table(14, 160)
    assert table.shape == (196, 160)
    assert torch.cdist(table, table).add(torch.eye(196) * 9).min() > 0.1  # every patch differs
    torch.manual_seed(0)
    tower = LlavaForConditionalGeneration(
        build.build_config(build.build_tokenizer())
    ).model.vision_tower
    samples = batches.draw_pictures(np.random.default_rng(0), 8, 1)
    pixels = batches.pixel_values([s.image for s in samples])
    grey = batches.pixel_values([Image.new("RGB", (112, 112), (128, 128, 128))])

    def spread_over_positions():
        # On a blank picture only its position tells one image token (after the layer norm)
        # from another.
        with torch.no_grad():
            tokens = tower(grey, output_hidden_states=True).hidden_states[0][0, 1:]
        return (tokens - tokens.mean(0)).norm(dim=1).mean().item()

    before = spread_over_positions()
    rms = position_init.init_position_embeddings(tower, pixels)
    weight = tower.embeddings.position_embedding.weight
    assert (weight[0] == 0).all()
    assert weight[1:].pow(2).mean().sqrt().item() == pytest.approx(rms, rel=1e-4)
    with torch.no_grad():
        patches = tower.embeddings.patch_embedding(pixels)
    assert patches.pow(2).mean().sqrt().item() == pytest.approx(rms, rel=1e-4)
    assert spread_over_positions() > 2 * before
