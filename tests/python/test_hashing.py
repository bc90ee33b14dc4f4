"""mmcore.multimodal.hashing.hash_item: stable across processes, sensitive to every input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from mmcore.multimodal.hashing import hash_item, hash_kwargs


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(photos.astronaut())


def test_is_sha256_hex(astronaut):
    digest = hash_item(astronaut)
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_equal_content_equal_hash(astronaut):
    copy = Image.fromarray(np.asarray(astronaut).copy())
    assert hash_item(astronaut) == hash_item(copy)
    arr = photos.coffee()
    assert hash_item(arr) == hash_item(arr.copy()) == hash_item(np.asfortranarray(arr))
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert hash_item(t) == hash_item(t.clone()) == hash_item(t.t().contiguous().t())


def test_kwarg_order_does_not_matter(astronaut):
    a = hash_item(astronaut, model_id="llava", size={"h": 336, "w": 336}, do_pad=True)
    b = hash_item(astronaut, do_pad=True, size={"w": 336, "h": 336}, model_id="llava")
    assert a == b


def test_different_inputs_differ(astronaut):
    pixels = np.asarray(astronaut)
    one_pixel = pixels.copy()
    one_pixel[100, 100, 0] ^= 1
    digests = [
        hash_item(astronaut),
        hash_item(Image.fromarray(one_pixel)),  # one bit
        hash_item(astronaut.convert("RGBA")),  # mode
        hash_item(Image.fromarray(photos.chelsea())),
        hash_item(Image.fromarray(photos.coffee())),
        hash_item(astronaut, model_id="llava-1.5"),  # model id
        hash_item(astronaut, model_id="llava-next"),
        hash_item(astronaut, model_id="llava-1.5", size=336),  # processor kwargs
        hash_item(astronaut, model_id="llava-1.5", size=224),
        hash_item(pixels),  # same pixels as an array is a different item kind
        hash_item(pixels.reshape(256, 1024, 3)),  # shape
        hash_item(pixels.astype(np.int16)),  # dtype
        hash_item(torch.from_numpy(pixels.copy())),
        hash_item(pixels.tobytes()),
        hash_item((np.zeros(4, np.float32), 16000)),  # audio with its rate
        hash_item((np.zeros(4, np.float32), 8000)),
        hash_item(b"ab", x="c"),  # framing: "ab"+"c" vs "a"+"bc"
        hash_item(b"a", x="bc"),
    ]
    assert len(set(digests)) == len(digests)


def test_palette_is_part_of_the_hash():
    indices = np.zeros((4, 4), np.uint8)
    red = Image.fromarray(indices, "P")
    red.putpalette([255, 0, 0] * 256)
    blue = Image.fromarray(indices, "P")
    blue.putpalette([0, 0, 255] * 256)
    assert hash_item(red) != hash_item(blue)


def test_bfloat16_tensor_hashes_raw_bytes():
    t = torch.linspace(0, 1, 8, dtype=torch.bfloat16)
    assert hash_item(t) == hash_item(t.clone())
    assert hash_item(t) != hash_item(t.float())


def test_unhashable_values_are_refused(astronaut):
    with pytest.raises(ValueError, match="type object"):
        hash_item(astronaut, callback=object())
    with pytest.raises(ValueError, match="dtype=object"):
        hash_item(np.array([object()], dtype=object))


def test_hash_kwargs_none_is_empty():
    assert hash_kwargs(None) == hash_kwargs({})
    assert hash_kwargs({"a": 1}) != hash_kwargs({"a": 2})
    assert hash_kwargs({"a": 1}) == hash_kwargs({"a": 1.0})


def test_stable_across_processes(astronaut):
    here = hash_item(astronaut, model_id="m", size={"h": 2, "w": 3}, scale=0.5)
    code = (
        "from PIL import Image; from skimage import data;"
        "from mmcore.multimodal.hashing import hash_item;"
        "print(hash_item(Image.fromarray(data.astronaut()), scale=0.5, size={'w': 3, 'h': 2},"
        " model_id='m'))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here
