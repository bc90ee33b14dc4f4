"""Random multimodal requests: random-noise images as PNG data URLs plus random words.

Every image is different, so no cache (processor, encoder, prefix) can shortcut the work.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Common short words: most are one token in BPE vocabularies, so words ~ tokens.
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part"
)
_WORDS = tuple(_WORD_TEXT.split())


@dataclass
class BenchRequest:
    """One benchmark request.

    Attributes:
        text: the user's text.
        image_urls: images as ``data:image/png;base64,...`` URLs, in order.
        output_len: tokens to generate (EOS is ignored so every request generates this many).
    """

    text: str
    image_urls: list[str]
    output_len: int

    def messages(self) -> list[dict]:
        """The request as OpenAI chat messages (images first, then the text)."""
        parts: list[dict] = [
            {"type": "image_url", "image_url": {"url": u}} for u in self.image_urls
        ]
        parts.append({"type": "text", "text": self.text})
        return [{"role": "user", "content": parts}]


def parse_image_size(value: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height); raises ValueError on anything else."""
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size must look like 336x336, got {value!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {value!r}")
    return w, h


def random_png_data_url(rng: np.random.Generator, width: int, height: int) -> str:
    """A random-noise RGB image as a PNG data URL."""
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def random_mm_requests(
    num_requests: int,
    *,
    input_len: int,
    output_len: int,
    images_per_request: int,
    image_size: tuple[int, int],
    seed: int = 0,
) -> list[BenchRequest]:
    """Build ``num_requests`` random requests.

    Args:
        num_requests: how many.
        input_len: words of text per request (about as many tokens).
        output_len: tokens to generate per request.
        images_per_request: random images per request.
        image_size: (width, height) of each image.
        seed: makes the workload reproducible.

    Returns:
        The requests.
    """
    if num_requests < 1 or input_len < 1 or output_len < 1 or images_per_request < 0:
        raise ValueError(
            "num_requests, input_len and output_len must be >= 1 and images_per_request >= 0"
        )
    rng = np.random.default_rng(seed)
    width, height = image_size
    requests = []
    for _ in range(num_requests):
        words = rng.choice(len(_WORDS), size=input_len)
        text = " ".join(_WORDS[i] for i in words)
        urls = [random_png_data_url(rng, width, height) for _ in range(images_per_request)]
        requests.append(BenchRequest(text=text, image_urls=urls, output_len=output_len))
    return requests
