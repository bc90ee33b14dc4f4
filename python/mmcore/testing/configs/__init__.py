"""Architectures of real checkpoints (values of their public Hugging Face config.json files).

Used to build weightless dummy checkpoints (:mod:`mmcore.testing.dummy_checkpoint`) so the
engine and benchmarks run the real shapes with random weights, without any download.
"""

from __future__ import annotations

# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336), the tower of all LLaVA-1.5/1.6.
CLIP_VIT_L_14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# Llama-2-7B shapes as fine-tuned by Vicuna-7B-v1.5 (vocab padded to 32064 by LLaVA-HF).
VICUNA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "vocab_size": 32064,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "dtype": "float16",
}

# Mistral-7B-Instruct-v0.2 (GQA 32/8, rope theta 1e6, no sliding window), as in LLaVA-NeXT.
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "hidden_act": "silu",
    "vocab_size": 32064,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "bfloat16",
}

# LLaVA-NeXT (1.6) anyres grid: 336 px tiles, up to 2x2 / 1x3 / 3x1.
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

_LLAVA_COMMON = {
    "image_token_index": 32000,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "vision_config": CLIP_VIT_L_14_336,
}

# Qwen2-VL / Qwen2.5-VL (Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct and -3B).
_QWEN_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}
_QWEN2_LM_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "vocab_size": 152064,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
_QWEN2_5_VISION = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
QWEN2_VL_IMAGE_PIXELS = (3136, 12845056)  # preprocessor_config.json min_pixels / max_pixels

# InternVL3-8B (OpenGVLab/InternVL3-8B-hf): InternViT-300M-448px-V2.5 + Qwen2.5-7B.
INTERNVL3_8B = {
    "model_type": "internvl",
    "architectures": ["InternVLForConditionalGeneration"],
    "image_token_id": 151667,
    "image_seq_length": 256,
    "downsample_ratio": 0.5,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
    "vision_config": {
        "model_type": "internvl_vision",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "attention_bias": True,
        "use_qk_norm": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-6,
        "layer_scale_init_value": 0.1,
        "image_size": [448, 448],
        "patch_size": [14, 14],
        "use_mean_pooling": True,
    },
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "vocab_size": 151674,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
}

# Idefics3-8B (HuggingFaceM4/Idefics3-8B-Llama3): SigLIP-so400m at 364 px + Llama-3.1-8B.
IDEFICS3_8B = {
    "model_type": "idefics3",
    "architectures": ["Idefics3ForConditionalGeneration"],
    "image_token_id": 128257,
    "scale_factor": 2,
    "pad_token_id": 128002,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
    "vision_config": {
        "model_type": "idefics3_vision",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 364,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "hidden_act": "silu",
        "vocab_size": 128259,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "pad_token_id": 128002,
        "dtype": "bfloat16",
    },
}

#: name -> (model config.json dict, chat template family)
REAL_CONFIGS: dict[str, dict] = {
    "internvl3-8b": INTERNVL3_8B,
    "idefics3-8b": IDEFICS3_8B,
    "qwen2-vl-7b-instruct": {
        **_QWEN2_LM_7B,
        **_QWEN_TOKENS,
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "vision_config": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_channels": 3,
            "hidden_size": 3584,
            "hidden_act": "quick_gelu",
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    },
    "qwen2.5-vl-7b-instruct": {
        **_QWEN2_LM_7B,
        **_QWEN_TOKENS,
        "model_type": "qwen2_5_vl",
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "max_position_embeddings": 128000,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "vision_config": {**_QWEN2_5_VISION, "out_hidden_size": 3584},
    },
    "qwen2.5-vl-3b-instruct": {
        **_QWEN2_LM_7B,
        **_QWEN_TOKENS,
        "model_type": "qwen2_5_vl",
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_window_layers": 70,
        "vocab_size": 151936,
        "max_position_embeddings": 128000,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
        "vision_config": {**_QWEN2_5_VISION, "out_hidden_size": 2048},
    },
    "llava-1.5-7b": {
        **_LLAVA_COMMON,
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "pad_token_id": 32001,
        "image_seq_length": 576,
        "text_config": VICUNA_7B,
        "dtype": "float16",
    },
    "llava-next-vicuna-7b": {
        **_LLAVA_COMMON,
        "model_type": "llava_next",
        "architectures": ["LlavaNextForConditionalGeneration"],
        "pad_token_id": 32001,
        "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS,
        "use_image_newline_parameter": True,
        "image_seq_length": 576,
        "text_config": VICUNA_7B,
        "dtype": "float16",
    },
    "llava-next-mistral-7b": {
        **_LLAVA_COMMON,
        "model_type": "llava_next",
        "architectures": ["LlavaNextForConditionalGeneration"],
        "image_grid_pinpoints": LLAVA_NEXT_PINPOINTS,
        "use_image_newline_parameter": True,
        "image_seq_length": 576,
        "text_config": MISTRAL_7B,
        "dtype": "bfloat16",
    },
}

# Prompt formats of the released checkpoints (Vicuna USER/ASSISTANT, Mistral [INST]).
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: {{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %} [/INST]"
    "{% else %} {{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# Qwen's ChatML with vision parts (the released template, without its default system turn).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# InternVL3's ChatML: an image part is "<IMG_CONTEXT>\n", a video part "<video>\n".
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Idefics3's "User:<image>...<end_of_utterance>\nAssistant:" format (no space after the colon
# when the turn opens with an image).
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
CHAT_TEMPLATES = {
    "qwen2-vl-7b-instruct": QWEN_CHAT_TEMPLATE,
    "qwen2.5-vl-7b-instruct": QWEN_CHAT_TEMPLATE,
    "qwen2.5-vl-3b-instruct": QWEN_CHAT_TEMPLATE,
    "llava-1.5-7b": VICUNA_CHAT_TEMPLATE,
    "llava-next-vicuna-7b": VICUNA_CHAT_TEMPLATE,
    "llava-next-mistral-7b": MISTRAL_CHAT_TEMPLATE,
    "internvl3-8b": INTERNVL_CHAT_TEMPLATE,
    "idefics3-8b": IDEFICS3_CHAT_TEMPLATE,
}
