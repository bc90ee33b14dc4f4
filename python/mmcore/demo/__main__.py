"""Ask the bundled demo model a question about a picture (Hugging Face generate(), greedy).

python -m mmcore.demo                          # the example picture, its sample questions
python -m mmcore.demo --image P.png --question "What colour is the star?"
"""

from __future__ import annotations

import argparse

from PIL import Image

import mmcore.demo
from mmcore.demo.evaluate import hf_generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcore.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--image", default=None, help="picture file (default: the bundled example)")
    parser.add_argument("--question", action="append", help="question (repeatable)")
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: the bundled one)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    image_path = args.image or mmcore.demo.example_image_path()
    questions = args.question or list(mmcore.demo.EXAMPLE_QUESTIONS)
    image = Image.open(image_path).convert("RGB")
    model = args.model or mmcore.demo.default_model_path()
    answers = hf_generate(model, [image] * len(questions), questions, device=args.device)
    print(f"picture: {image_path}")
    for question, answer in zip(questions, answers):
        print(f"Q: {question}\nA: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
