"""A tiny, seeded Whisper checkpoint (HF ``WhisperForConditionalGeneration``) built offline.

The tokenizer is a byte-level BPE trained on a few sentences plus Whisper's special tokens
(``<|endoftext|>``, ``<|startoftranscript|>``, a few language tokens, the task tokens,
``<|startofprev|>``, ``<|nospeech|>``, ``<|notimestamps|>`` and the 1,501 timestamp tokens
``<|0.00|>`` ... ``<|30.00|>``), in Whisper's order. The generation config carries what HF's
``WhisperForConditionalGeneration.generate`` reads (``lang_to_id``, ``task_to_id``, ...), so the
oracle runs the real Whisper generation code.
"""

from __future__ import annotations

import json
import os

import torch

from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE

TINY_LANGUAGES = ("en", "de", "fr", "es")
CROSS_ATTENTION_SCALE = 8.0
ENCODER_CONV_SCALE = 10.0
TIMESTAMP_HEAD_SCALE = 0.8
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of speech recognition and translation.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) -",
    "Guten Tag, bonjour, hola: one two three four five six seven eight nine ten.",
]


def whisper_special_tokens(languages=TINY_LANGUAGES) -> list[str]:
    """Whisper's special tokens in vocabulary order (languages limited to ``languages``)."""
    return (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in languages]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]
        + ["<|notimestamps|>"]
        + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    )


def build_whisper_tokenizer(base_vocab: int | None = None, languages=TINY_LANGUAGES):
    """A small byte-level BPE with Whisper's special tokens, as a fast tokenizer.

    Args:
        base_vocab: pad the BPE with unreachable filler tokens to this size first (50257 gives
            Whisper's real ids and, with all 100 languages, large-v3's 51866 tokens).
        languages: language codes with a token.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if base_vocab is not None:
        state = json.loads(tok.to_str())["model"]
        vocab = dict(state["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
        for i in range(base_vocab - len(vocab)):
            vocab[f"fill{i}"] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = whisper_special_tokens(languages)
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def build_tiny_whisper(path: str | os.PathLike, seed: int = 0, *, num_mel_bins: int = 80) -> str:
    """Write a tiny Whisper checkpoint (2+2 layers, d_model 32) with its processor files.

    Args:
        path: output folder.
        seed: torch seed of the random weights.
        num_mel_bins: 80 (Whisper up to large-v2) or 128 (large-v3).

    Returns:
        ``str(path)``.
    """
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    tok = build_whisper_tokenizer()
    ids = tok.convert_tokens_to_ids
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=num_mel_bins,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|endoftext|>"),
        decoder_start_token_id=ids("<|startoftranscript|>"),
        suppress_tokens=[],
        begin_suppress_tokens=None,
        tie_word_embeddings=False,  # the head alone is scaled (tied, the inputs would be too)
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(LM_HEAD_SCALE)
        # 1,501 of the ~1,800 tokens are timestamps: damp them so some text is written too.
        model.proj_out.weight[ids("<|0.00|>") :].mul_(TIMESTAMP_HEAD_SCALE)
        # Let the audio steer the tokens: std-0.02 convolutions leave the encoder output to its
        # position embeddings, and a weak cross-attention leaves the decoder deaf to it.
        model.model.encoder.conv1.weight.mul_(ENCODER_CONV_SCALE)
        model.model.encoder.conv2.weight.mul_(ENCODER_CONV_SCALE)
        for layer in model.model.decoder.layers:
            layer.encoder_attn.out_proj.weight.mul_(CROSS_ATTENTION_SCALE)
    gen = model.generation_config
    gen.decoder_start_token_id = ids("<|startoftranscript|>")
    gen.eos_token_id = gen.pad_token_id = ids("<|endoftext|>")
    gen.is_multilingual = True
    gen.lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in TINY_LANGUAGES}
    gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    gen.no_timestamps_token_id = ids("<|notimestamps|>")
    gen.prev_sot_token_id = ids("<|startofprev|>")
    gen.max_initial_timestamp_index = 50
    gen.suppress_tokens = []
    gen.begin_suppress_tokens = None
    gen.forced_decoder_ids = None
    gen.max_length = 64
    gen._from_model_config = False  # else from_pretrained rebuilds it from the model config
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(path)
    return str(path)
