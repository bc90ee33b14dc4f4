"""Tiny, seeded Hugging Face audio-language checkpoints (Qwen2-Audio) built offline for tests.

Same recipe as :mod:`mmcore.testing.tiny_checkpoints`: a byte-level BPE trained on a few
sentences with the family's special tokens, a small random model, the LM head scaled so greedy
decoding is decisive, and the HF processor files (Whisper feature extractor, chat template).
"""

from __future__ import annotations

import os

import torch

from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE

QWEN_AUDIO_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]
_CORPUS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\nAudio 1: What is said in this clip? Transcribe it.<|im_end|>\n",
    "<|im_start|>assistant\nThe speaker says the quick brown fox jumps over the lazy dog.",
    "A bird sings, a dog barks, glass breaks, rain falls and music plays softly.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _ { } [ ] :",
]


def build_qwen_audio_tokenizer(extra_special: tuple[str, ...] = ()):
    """A small byte-level BPE with Qwen2-Audio's special tokens (and ``extra_special``), as a
    fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    tok = train_byte_bpe(_CORPUS, QWEN_AUDIO_SPECIAL + list(extra_special), 360)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )


def build_tiny_qwen2_audio(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    text_overrides: dict | None = None,
    extra_special: tuple[str, ...] = (),
) -> str:
    """Write a tiny Qwen2-Audio checkpoint (2-layer Whisper encoder, 128 mel bins, Qwen2 LM).

    Args:
        path: output folder.
        seed: torch seed of the random weights.
        text_overrides: Qwen2 text-config fields to change (e.g. ``num_key_value_heads``).
        extra_special: further special tokens of the tokenizer (e.g. another modality's).

    Returns:
        ``str(path)``.
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tok = build_qwen_audio_tokenizer(extra_special)
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        d_model=32,
        max_source_positions=1500,
    )
    text_fields = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    text = Qwen2Config(vocab_size=len(tok), **{**text_fields, **(text_overrides or {})})
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_id)
    config.audio_token_id = audio_id
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok
    )
    processor.save_pretrained(path)
    return str(path)
