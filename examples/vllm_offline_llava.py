"""A script written for vLLM's offline API, run by mmcore: only the import line differs.

    python examples/vllm_offline_llava.py [MODEL]

MODEL (default ``llava-hf/llava-1.5-7b-hf``) is a checkpoint folder or a hub id; a hub id is
taken from the Hugging Face cache (``HF_HOME``), and downloaded when it is not there and
``HF_HUB_OFFLINE`` is not set. Prints one JSON line per answer.
"""

import json
import sys

from PIL import Image

from mmcore import LLM, SamplingParams  # was: from vllm import LLM, SamplingParams

MODEL = sys.argv[1] if len(sys.argv) > 1 else "llava-hf/llava-1.5-7b-hf"


def main() -> None:
    llm = LLM(
        model=MODEL,
        revision="main",
        dtype="auto",
        max_model_len=512,
        limit_mm_per_prompt={"image": 2},
        mm_processor_kwargs={"do_center_crop": True},
        trust_remote_code=False,
        enable_prefix_caching=True,
        seed=0,
    )
    red = Image.new("RGB", (320, 240), (220, 30, 30))
    blue = Image.new("RGB", (200, 300), (30, 30, 220))
    params = SamplingParams(temperature=0.0, max_tokens=8)

    # Two images in one prompt, in the model's own prompt format.
    outputs = llm.generate(
        {
            "prompt": "USER: <image>\n<image>\nWhat differs between the two pictures?\nASSISTANT:",
            "multi_modal_data": {"image": [red, blue]},
        },
        params,
    )
    # The chat API renders the checkpoint's chat template.
    outputs += llm.chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": red},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        params,
    )
    tokenizer = llm.get_tokenizer()
    for output in outputs:
        completion = output.outputs[0]
        print(
            json.dumps(
                {
                    "text": completion.text,
                    "token_ids": list(completion.token_ids),
                    "num_prompt_tokens": len(output.prompt_token_ids),
                    "decoded": tokenizer.decode(completion.token_ids, skip_special_tokens=True),
                }
            )
        )


if __name__ == "__main__":
    main()
