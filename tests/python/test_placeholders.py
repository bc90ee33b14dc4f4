"""_core.expand_placeholders through the binding: numpy in/out, messages, and a property test."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mmcore import _core

IMAGE, AUDIO, START, END, NEWLINE = 100, 101, 102, 103, 104
IMG, AUD = _core.Modality.IMAGE, _core.Modality.AUDIO
KNOWN = [
    _core.PlaceholderToken(IMAGE, IMG, "<image>"),
    _core.PlaceholderToken(AUDIO, AUD, "<audio>"),
]


def simple(identifier, n, modality=IMG):
    token = IMAGE if modality == IMG else AUDIO
    return _core.PlaceholderItem(modality, identifier, token, n)


def framed(identifier, n):
    return _core.PlaceholderItem(
        IMG,
        identifier,
        IMAGE,
        replacement=[START] + [IMAGE] * n + [END],
        embed_mask=[False] + [True] * n + [False],
    )


def grid(identifier, rows, cols):
    """Fuyu-style: each row of image tokens ends with a newline token that takes no embedding."""
    replacement = ([IMAGE] * cols + [NEWLINE]) * rows
    mask = np.array(([1] * cols + [0]) * rows, dtype=np.uint8)
    return _core.PlaceholderItem(IMG, identifier, IMAGE, replacement=replacement, embed_mask=mask)


def expand(prompt, items, max_len=4096, allowed=(IMG, AUD)):
    return _core.expand_placeholders(prompt, items, list(allowed), max_len, KNOWN)


def test_numpy_int32_in_and_out_without_copy():
    prompt = np.array([1, IMAGE, 2], dtype=np.int32)
    res = expand(prompt, [simple("a", 3)])
    assert res.token_ids.dtype == np.int32
    np.testing.assert_array_equal(res.token_ids, [1, IMAGE, IMAGE, IMAGE, 2])
    assert not res.token_ids.flags.owndata  # a view on the C++ result
    ids = res.token_ids
    del res
    np.testing.assert_array_equal(ids, [1, IMAGE, IMAGE, IMAGE, 2])  # still alive


@pytest.mark.parametrize(
    "prompt",
    [[1, IMAGE, 2], np.array([1, IMAGE, 2], np.int64), np.array([1, IMAGE, 2], np.uint16)],
)
def test_accepts_lists_and_any_integer_dtype(prompt):
    res = expand(prompt, [simple("a", 2)])
    np.testing.assert_array_equal(res.token_ids, [1, IMAGE, IMAGE, 2])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (np.array([1.0, 2.0]), "prompt_token_ids must hold integers"),
        (np.zeros((2, 2), np.int32), "prompt_token_ids must be 1-D"),
        (np.array([1, 2**40], np.int64), r"prompt_token_ids\[1\] = 1099511627776 does not fit"),
    ],
)
def test_rejects_bad_prompt_arrays(prompt, message):
    with pytest.raises(ValueError, match=message):
        expand(prompt, [])


def test_features_carry_mask_and_sizes():
    res = expand([7, IMAGE, 8, AUDIO], [framed("f", 2), simple("s", 3, AUD)])
    f, s = res.features
    assert (f.identifier, f.offset, f.length, f.num_embeds) == ("f", 1, 4, 2)
    assert f.embed_mask.dtype == np.uint8
    np.testing.assert_array_equal(f.embed_mask, [0, 1, 1, 0])
    assert (s.modality, s.offset, s.length, s.num_embeds) == (AUD, 6, 3, 3)
    assert s.embed_mask.size == 0  # empty = every position takes an embedding


def test_grid_item_newlines_take_no_embeddings():
    res = expand([IMAGE], [grid("g", rows=2, cols=3)])
    np.testing.assert_array_equal(res.token_ids, [IMAGE] * 3 + [NEWLINE] + [IMAGE] * 3 + [NEWLINE])
    assert res.features[0].num_embeds == 6


@pytest.mark.parametrize(
    ("prompt", "items", "message"),
    [
        (
            [IMAGE, IMAGE],
            [simple("a", 1)],
            "prompt has 2 <image> placeholders but 1 image was given",
        ),
        (
            [IMAGE],
            [simple("a", 1), simple("b", 1)],
            "prompt has 1 <image> placeholder but 2 images",
        ),
        ([IMAGE], [], "prompt has 1 <image> placeholder but 0 images were given"),
        (
            [1],
            [simple("a", 2, AUD)],
            "prompt has 0 <audio> placeholders but 1 audio clip was given",
        ),
        (
            [IMAGE] * 3,
            [simple("a", 5)],
            "needs exactly 5 <image> tokens for image 0, found 3",
        ),
        ([IMAGE], [simple("a", 0)], "needs num_embeds > 0"),
        ([IMAGE], [simple("", 2)], "image 0 has an empty identifier"),
    ],
)
def test_errors_name_the_problem(prompt, items, message):
    with pytest.raises(ValueError, match=message):
        expand(prompt, items)


def test_modality_and_length_errors():
    with pytest.raises(ValueError, match="^model does not accept audio input$"):
        expand([AUDIO], [simple("a", 2, AUD)], allowed=(IMG,))
    with pytest.raises(
        ValueError,
        match="^prompt is 12 tokens after expanding placeholders, longer than the maximum of 11$",
    ):
        expand([1, IMAGE, 2], [simple("a", 10)], max_len=11)


def test_default_messages_without_placeholder_names():
    with pytest.raises(ValueError, match="prompt has 2 placeholders of token 100 but 1 image"):
        _core.expand_placeholders([IMAGE, IMAGE], [simple("a", 1)], [IMG], 64)


def test_item_and_feature_objects():
    item = framed("x", 2)
    assert (item.modality, item.identifier, item.placeholder_token_id) == (IMG, "x", IMAGE)
    np.testing.assert_array_equal(item.expansion(), [START, IMAGE, IMAGE, END])
    np.testing.assert_array_equal(item.embed_mask, [0, 1, 1, 0])
    made = _core.MMFeature(IMG, "x", 1, 4, 2, np.array([0, 1, 1, 0], np.uint8))
    assert made == expand([5, IMAGE], [item]).features[0]
    full = _core.MMFeature(AUD, "y", 0, 3, 3, [True, True, True])
    assert full.embed_mask.size == 0  # an all-ones mask is stored as "all"
    with pytest.raises(ValueError, match="num_embeds 3 but 2 positions"):
        _core.MMFeature(IMG, "x", 0, 3, 3, [1, 0, 1])
    with pytest.raises(ValueError, match="embed_mask of 2 entries for length 3"):
        _core.MMFeature(IMG, "x", 0, 3, 2, [1, 1])
    with pytest.raises(ValueError, match="length > 0"):
        _core.MMFeature(IMG, "x", 0, 0, 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.lists(st.integers(0, 49), max_size=4))
def test_partial_expansion_is_an_error_naming_the_counts(num_embeds, num_tokens, text):
    assume(num_tokens != num_embeds)
    prompt = text + [IMAGE] * num_tokens + text
    with pytest.raises(ValueError) as err:
        expand(prompt, [simple("a", num_embeds)])
    message = str(err.value)
    assert f"prompt has {num_tokens} <image> placeholders but 1 image was given" in message
    assert f"needs exactly {num_embeds} <image> tokens for image 0, found {num_tokens}" in message


# --- property test ------------------------------------------------------------------------------

TEXT = st.lists(st.integers(min_value=0, max_value=49), max_size=6)


@st.composite
def item_specs(draw):
    kind = draw(st.sampled_from(["image", "audio", "framed", "grid"]))
    if kind == "grid":
        return kind, (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return kind, draw(st.integers(1, 6))


def build(kind, size, identifier):
    if kind == "image":
        return simple(identifier, size)
    if kind == "audio":
        return simple(identifier, size, AUD)
    if kind == "framed":
        return framed(identifier, size)
    return grid(identifier, *size)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TEXT, item_specs()), max_size=6), TEXT)
def test_expansion_properties(segments, tail):
    prompt, items = [], []
    for k, (text, (kind, size)) in enumerate(segments):
        item = build(kind, size, f"item-{k}")
        prompt += text + [item.placeholder_token_id]
        items.append(item)
    prompt += tail
    # Items are given per modality (all images, then all audio); features follow the prompt.
    given_items = sorted(items, key=lambda it: int(it.modality))

    res = expand(np.array(prompt, np.int32), given_items)
    ids = res.token_ids
    assert [f.identifier for f in res.features] == [it.identifier for it in items]
    expected_len = len(prompt) - len(items) + sum(it.expansion().size for it in items)
    assert ids.size == expected_len
    prev_end = 0
    for feature, item in zip(res.features, items):
        assert feature.offset >= prev_end
        prev_end = feature.offset + feature.length
        np.testing.assert_array_equal(ids[feature.offset : prev_end], item.expansion())
        mask = feature.embed_mask
        assert feature.num_embeds == (feature.length if mask.size == 0 else int(mask.sum()))
    # Text outside the items is kept in order.
    outside = np.ones(ids.size, bool)
    for f in res.features:
        outside[f.offset : f.offset + f.length] = False
    assert ids[outside].tolist() == [t for t in prompt if t not in (IMAGE, AUDIO)]

    again = expand(ids, given_items)
    np.testing.assert_array_equal(again.token_ids, ids)
    assert list(again.features) == list(res.features)
