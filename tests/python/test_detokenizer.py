"""Incremental detokenization equals a full decode; stop strings cut the text."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmcore.sampling.detokenizer import IncrementalDetokenizer, backend_decode

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


def test_include_stop_str_in_output_keeps_the_stop_string(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [], stop=["STOP"], include_stop_str_in_output=True)
    for tok in tokenizer(TEXT[1])["input_ids"]:
        if detok.append(tok):
            break
    assert detok.text == "Stop here STOP"
    assert detok.stop_reason == "STOP"


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, [], stop=["never", "here"])
    for tok in tokenizer(TEXT[1])["input_ids"]:
        if detok.append(tok):
            break
    assert (detok.text, detok.stop_reason) == ("Stop ", "here")


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A SentencePiece-style (Metaspace) tokenizer, whose decoder puts a space after special
    tokens followed by a word, as Llama-2's does."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<x>"])
    tok.train_from_iterator(["hello world, the cat sat on the mat"] * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.mark.parametrize("skip", [False, True])
def test_spaces_between_special_tokens(metaspace_tokenizer, skip):
    tok = metaspace_tokenizer
    ids = [tok.convert_tokens_to_ids("<s>")] + tok("hello world", add_special_tokens=False)[
        "input_ids"
    ]
    ids += [tok.convert_tokens_to_ids("</s>")] + tok("the cat", add_special_tokens=False)[
        "input_ids"
    ]

    def run(spaces: bool) -> str:
        detok = IncrementalDetokenizer(
            tok, [], stop=[], skip_special_tokens=skip, spaces_between_special_tokens=spaces
        )
        for t in ids:
            detok.append(t)
        return detok.text

    # True: the tokenizer's own decoding; False: special tokens glued to their neighbours.
    assert run(True) == tok.decode(ids, skip_special_tokens=skip)
    if skip:  # dropped special tokens split nothing
        assert run(False) == run(True) == tok.decode(ids, skip_special_tokens=True)
    else:
        assert run(False) == "<s>hello world</s>the cat"
        assert run(True) != run(False)


def test_backend_decode_only_where_the_wrapper_adds_nothing(tokenizer):
    assert backend_decode(tokenizer) is not None  # a plain fast tokenizer: the Rust decode

    class Shouting(type(tokenizer)):
        def decode(self, *args, **kwargs):
            return super().decode(*args, **kwargs).upper()

    shouting = Shouting(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    cleaning = type(tokenizer)(
        tokenizer_object=tokenizer.backend_tokenizer, clean_up_tokenization_spaces=True
    )
    assert backend_decode(shouting) is None and backend_decode(cleaning) is None
    detok = IncrementalDetokenizer(shouting, [], stop=[])
    for tok in tokenizer(TEXT[0])["input_ids"]:
        detok.append(tok)
    assert detok.text == TEXT[0].upper()  # an overridden decode is still honoured


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("spaces", [False, True])
def test_random_ids_rust_decode_equals_the_wrapper(metaspace_tokenizer, skip, spaces):
    """Random ids (special tokens and pieces mixed), token by token: the direct Rust decode
    gives the Hugging Face wrapper's text, with both special-token options."""
    tok = metaspace_tokenizer
    gen = random.Random(7)
    ids = [gen.randrange(len(tok)) for _ in range(300)]

    def run(direct: bool) -> str:
        detok = IncrementalDetokenizer(
            tok, [1, 5, 9], stop=[], skip_special_tokens=skip, spaces_between_special_tokens=spaces
        )
        assert detok._backend_decode is not None  # a plain fast tokenizer: the Rust decode
        if not direct:
            detok._backend_decode = None  # through tokenizer.decode, as before
        for t in ids:
            detok.append(t)
        return detok.text

    direct = run(True)
    assert direct == run(False)
    if spaces:
        assert direct == tok.decode(ids, skip_special_tokens=skip)
