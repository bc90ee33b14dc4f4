"""Incremental detokenization equals a full decode; stop strings cut the text."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmcore.sampling.detokenizer import IncrementalDetokenizer

TEXT = [
    "The quick brown fox jumps over the lazy dog. Ünïcödé wörds and emoji 🙂 too!",
    "Stop here STOP and never after; 日本語のテキストも。",
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>")


@pytest.mark.parametrize("text", TEXT)
def test_incremental_equals_full_decode(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, [0, 5, 6], stop=[])
    for tok in ids:
        assert detok.append(tok) is None
    assert detok.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_truncates_and_reports(tokenizer):
    ids = tokenizer(TEXT[1])["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, [], stop=["STOP"])
    hit = None
    for tok in ids:
        hit = detok.append(tok)
        if hit:
            break
    assert hit == "STOP"
    assert detok.text == "Stop here "


def test_stream_text_holds_back_a_possible_stop_prefix(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [], stop=["STOP"])
    for tok in tokenizer("Stop here ST")["input_ids"]:
        detok.append(tok)
    assert detok.text == "Stop here ST"
    assert detok.stream_text(finished=False) == "Stop here"
    assert detok.stream_text(finished=True) == "Stop here ST"
