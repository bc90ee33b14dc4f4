"""The demo model's pieces, built from nothing: tokenizer, processor and LLaVA config.

A byte-level BPE tokenizer trained on the shapes vocabulary, a LlavaProcessor with a
CLIPImageProcessor (pictures of any size and aspect are resized to IMAGE_SIZE square, never
cropped, so no shape is cut off) and a LLaVA-1.5-style chat template, and a small CLIP vision
tower + projector + Llama language model.
"""

from __future__ import annotations

from mmcore.demo import shapes

IMAGE_SIZE = 112  # the vision tower's input side; a shape of 8% is ~9 px, a patch 8 px
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
IMAGE_TOKEN = "<image>"
# CLIP's normalisation (what CLIPImageProcessor uses by default), written out so that the
# training loop can apply it to pictures it draws at the model's size.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-1.5 conversation format: "<s>USER: <image>\nWhat shape is this? ASSISTANT: star</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tokenizer():
    """Train the byte-level BPE tokenizer on the shapes questions and answers.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<s> </s> <pad> <unk>`` and the ``<image>`` token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(shapes.corpus_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


def check_image_size(image_size: int) -> int:
    """``image_size`` if the vision tower can take it (a multiple of PATCH_SIZE), else ValueError."""
    if image_size < PATCH_SIZE or image_size % PATCH_SIZE:
        raise ValueError(
            f"image size must be a positive multiple of {PATCH_SIZE}, got {image_size}"
        )
    return image_size


def num_image_tokens(image_size: int = IMAGE_SIZE) -> int:
    """Image tokens of a picture at ``image_size``: one per patch (the class token is dropped)."""
    return (check_image_size(image_size) // PATCH_SIZE) ** 2


def build_processor(tokenizer, image_size: int = IMAGE_SIZE):
    """Wrap the tokenizer with a CLIP image processor into a LlavaProcessor.

    Args:
        tokenizer: from :func:`build_tokenizer`.
        image_size: the square side pictures are resized to (a multiple of PATCH_SIZE).

    Returns:
        A ``LlavaProcessor`` that resizes pictures to the model's square (bicubic, no crop)
        and carries the chat template.
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    size = check_image_size(image_size)
    image_processor = CLIPImageProcessor(
        size={"height": size, "width": size},
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        resample=3,  # PIL bicubic, as scenes.to_model_size
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_config(tokenizer, image_size: int = IMAGE_SIZE):
    """The LLaVA config: CLIP 160-wide x 6 layers, Llama 256-wide x 4 layers (GQA 4/2).

    Args:
        tokenizer: gives the vocabulary size and the special token ids.
        image_size: the vision tower's input side (a multiple of PATCH_SIZE).

    Returns:
        A ``LlavaConfig``.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=160,
        intermediate_size=640,
        num_hidden_layers=6,
        num_attention_heads=5,
        image_size=check_image_size(image_size),
        patch_size=PATCH_SIZE,
        projection_dim=160,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens(image_size),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
