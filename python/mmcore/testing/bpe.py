"""The byte-level BPE every tiny test checkpoint's tokenizer is trained as (offline, seconds)."""

from __future__ import annotations

from collections.abc import Iterable


def train_byte_bpe(
    corpus: Iterable[str],
    special_tokens: list[str],
    vocab_size: int,
    *,
    unk_token: str | None = None,
    split_newline_runs: bool = False,
):
    """A byte-level BPE trained on ``corpus``, its special tokens first (each a single id).

    Args:
        corpus: training sentences.
        special_tokens: ids 0.. in this order.
        vocab_size: target size (special tokens included).
        unk_token: the model's unknown token, if it has one.
        split_newline_runs: a run of line breaks is its own pre-token (SentencePiece-like, as
            Gemma's tokenizer learns newline-run tokens).

    Returns:
        The trained ``tokenizers.Tokenizer`` (wrap it in ``PreTrainedTokenizerFast``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk_token) if unk_token else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_newline_runs:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex("\n+"), "isolated"), tok.pre_tokenizer]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok
