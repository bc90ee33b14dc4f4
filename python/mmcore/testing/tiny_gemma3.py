"""A tiny, seeded Gemma 3 checkpoint built offline for tests and benches.

The folder holds what a published ``google/gemma-3-*-it`` checkpoint holds: config, safetensors,
a tokenizer with Gemma's image tokens (``<start_of_image>``, ``<end_of_image>``,
``<image_soft_token>``), the image processor and processor configs and a Gemma-style chat
template. The LM mixes sliding-window and global layers with a small window (8 tokens) so a
prompt of ~100 tokens runs far past it.
"""

from __future__ import annotations

import os

import torch

BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
SPECIAL_TOKENS += [BOI, EOI, IMAGE_SOFT]
IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 32, 4, 16  # 8x8 patches pooled 2x2 -> 16 tokens
SLIDING_WINDOW = 8

# No line breaks in the corpus: "\n" stays one token, so the processor's "\n\n" around an image
# tokenizes the same whether HF tokenizes it with its neighbours or mmcore on its own.
_CORPUS = [
    "A photo of an astronaut standing next to a flag on the moon.",
    "The cat sleeps on a warm blanket while the coffee cools on the table.",
    "user model Describe the picture in detail, including colors, shapes and people.",
    "Here is the original image and here are some crops to help you see better",
    "The rocket lifts off into a clear blue sky, leaving a trail of smoke.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _",
]

# Gemma 3's turn layout; image parts render as <start_of_image> (the processor expands it).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    query_pre_attn_scalar=24,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    sliding_window=SLIDING_WINDOW,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
    hidden_activation="gelu_pytorch_tanh",
)
_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    layer_norm_eps=1e-6,
    vision_use_head=False,
    hidden_act="gelu_pytorch_tanh",
)


def build_gemma3_tokenizer(newline_runs: bool = False):
    """A small byte-level BPE with Gemma 3's special tokens (each a single id).

    Args:
        newline_runs: also learn single tokens for runs of 2..8 line breaks, as Gemma's own
            tokenizer has (up to 31; the special token ids stay the same).
    """
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    corpus = _CORPUS + (["\n" * k for k in range(2, 9)] * 20 if newline_runs else [])
    tok = train_byte_bpe(
        corpus, SPECIAL_TOKENS, 300, unk_token="<unk>", split_newline_runs=newline_runs
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT},
    )


def build_tiny_gemma3(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
) -> str:
    """Write a tiny Gemma 3 (``Gemma3ForConditionalGeneration``) checkpoint.

    Vision: SigLIP, 32 px images, 4 px patches (8x8), 2 layers, pooled 2x2 to 16 tokens per
    image. LM: 4 layers (sliding, sliding, global, sliding), window 8, GQA 4/2, head dim 32,
    local rope base 1e4, global rope base 1e5 with linear scaling 2, tied embeddings.

    Args:
        path: folder to write (created if missing).
        seed: torch seed of the random weights.
        text_overrides: LM config values replacing the tiny defaults.
        vision_overrides: SigLIP config values replacing the tiny defaults.

    Returns:
        ``str(path)``.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_gemma3_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOI, EOI, IMAGE_SOFT)}
    if tok.unk_token_id in ids.values():
        raise RuntimeError("Gemma's image tokens were not added as special tokens")
    text = dict(
        _TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **(text_overrides or {}),
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(_VISION, **(vision_overrides or {}), model_type="siglip_vision_model"),
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE_SOFT],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # The head is the (tied) embedding, so it is not scaled up as other tiny checkpoints' heads
    # are: that makes greedy decoding repeat one token; float32 keeps ties away at this size.
    with torch.no_grad():
        # HF initializes the projector and the (1 + w) norms at zero: random values exercise them.
        for name, param in model.named_parameters():
            if "norm" in name or "mm_input_projection" in name:
                param.normal_(0.0, 0.3 if "norm" in name else 0.2)
    model.save_pretrained(path)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
        pan_and_scan_min_crop_size=8,
        pan_and_scan_max_num_crops=3,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(path)
    return path
