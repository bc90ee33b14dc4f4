"""Whisper (encoder-decoder) parity with HF ``WhisperForConditionalGeneration.generate()`` on a
tiny seeded checkpoint: 8 clips of real (espeak-ng) speech, noise and tones at several rates and
formats, batched; a 45 s clip split into windows; preemption and aborts returning every
cross-attention block to the free pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.transcription import split_audio
from mmcore.multimodal import audio_io
from mmcore.testing.speech import encode, synthesize_speech
from mmcore.testing.tiny_whisper import build_tiny_whisper

MAX_TOKENS = 12
RATE = 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Engine(checkpoint, max_num_seqs=4, max_num_batched_tokens=64)


@pytest.fixture(scope="module")
def hf(checkpoint):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    return model, WhisperFeatureExtractor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def clips():
    """(what mmcore gets, the 16 kHz waveform HF gets, language, task) per clip."""
    hello = synthesize_speech("hello world, this is a test")
    fox = synthesize_speech("the quick brown fox jumps over the lazy dog")
    guten = synthesize_speech("guten tag, wie geht es dir", voice="de")
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(RATE * 4)).astype(np.float32)
    tone = (0.3 * np.sin(np.arange(RATE * 2) * 2 * np.pi * 440 / RATE)).astype(np.float32)
    fox_44k = audio_io.resample(fox, RATE, 44100)
    mp3 = encode(hello, RATE, "mp3")
    full = np.tile(fox, -(-RATE * 30 // len(fox)))[: RATE * 30]
    return [
        ((hello, RATE), hello, "en", "transcribe"),
        ((fox, RATE), fox, "en", "transcribe"),
        ((guten, RATE), guten, "de", "transcribe"),
        ((guten, RATE), guten, "de", "translate"),
        ((noise, RATE), noise, "fr", "transcribe"),
        ((tone, RATE), tone, "es", "transcribe"),
        ((fox_44k, 44100), audio_io.resample(fox_44k, 44100, RATE), "en", "transcribe"),
        (mp3, audio_io.resample(*audio_io.decode_audio(mp3), RATE), "en", "transcribe"),
        ((full, RATE), full, "en", "translate"),
    ]


def hf_tokens(hf, wave, language, task, max_new_tokens=MAX_TOKENS) -> list[int]:
    """HF's greedy tokens for the decoder prompt, through ``GenerationMixin.generate`` on
    ``WhisperForConditionalGeneration``; checked against the model's own Whisper ``generate``
    up to the end of its first decoding pass (see ``first_pass_len``)."""
    from transformers.generation.utils import GenerationMixin

    model, extractor = hf
    feats = extractor(wave, sampling_rate=RATE, return_tensors="pt").input_features
    gen = model.generation_config
    prompt = [
        gen.decoder_start_token_id,
        gen.lang_to_id[f"<|{language}|>"],
        gen.task_to_id[task],
        gen.no_timestamps_token_id,
    ]
    with torch.no_grad():
        out = GenerationMixin.generate(
            model,
            input_features=feats,
            decoder_input_ids=torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )[0, len(prompt) :].tolist()
        whisper = model.generate(
            feats, language=language, task=task, max_new_tokens=max_new_tokens
        )[0].tolist()
    eos = gen.eos_token_id
    out = out[: out.index(eos) + 1] if eos in out else out
    n = first_pass_len(whisper, gen.no_timestamps_token_id + 1)
    assert out[:n] == whisper[:n], "GenerationMixin and Whisper generate disagree"
    return out


def first_pass_len(tokens: list[int], timestamp_begin: int) -> int:
    """Tokens of Whisper ``generate``'s first pass: a random model may write two timestamps
    in a row even after ``<|notimestamps|>``; Whisper's generate then ends the segment there
    and decodes again from that time (its long-form seek loop), which greedy decoding of one
    request does not do."""
    for i in range(len(tokens) - 1):
        if tokens[i] >= timestamp_begin and tokens[i + 1] >= timestamp_begin:
            return i + 2
    return len(tokens)


def decoder_prompt(language: str, task: str) -> str:
    return f"<|startoftranscript|><|{language}|><|{task}|><|notimestamps|>"


def test_greedy_tokens_match_hf_generate(engine, hf, clips):
    prompts = [
        {
            "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": audio}},
            "decoder_prompt": decoder_prompt(language, task),
        }
        for audio, _, language, task in clips
    ]
    outputs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    distinct = set()
    for (_, wave, language, task), out in zip(clips, outputs, strict=True):
        ours = list(out.outputs[0].token_ids)
        ref = hf_tokens(hf, wave, language, task)
        assert ours == ref[: len(ours)], (language, task)
        assert len(ours) == MAX_TOKENS or ours[-1] in engine.config.eos_token_ids
        distinct.add(tuple(ours))
    assert len(distinct) >= 4  # the audio steers the tokens: the oracle is not vacuous
    stats = engine.stats()
    assert stats["kv_blocks_free"] == engine.config.num_blocks
    assert stats["encoder_referenced_entries"] == 0


def test_long_audio_is_split_into_windows_matching_hf_per_window(engine, hf):
    speech = synthesize_speech("one two three four five six seven eight nine ten")
    rng = np.random.default_rng(1)
    wave = np.concatenate(
        [
            np.tile(speech, -(-RATE * 40 // len(speech)))[: RATE * 40],
            0.05 * rng.standard_normal(RATE * 5),
        ]
    ).astype(np.float32)
    result = engine.transcribe((wave, RATE), language="en")
    spans = split_audio(wave, RATE)
    assert len(spans) == 2 and spans[0][1] - spans[0][0] <= 30 * RATE
    assert spans[0][1] >= 29 * RATE  # cut in the last second of the first window
    assert [w[0] for w in result.windows] == [s / RATE for s, _ in spans]
    assert result.duration == pytest.approx(45.0)
    for (start, end), ours in zip(spans, result.token_ids, strict=True):
        ref = hf_tokens(hf, wave[start:end], "en", "transcribe", max_new_tokens=len(ours))
        assert ours == ref[: len(ours)]
    tokens = engine.processor.tokens
    assert result.text == " ".join(
        t.strip() for t in (tokens.text(ids) for ids in result.token_ids) if t.strip()
    )


def test_language_detection_matches_hf(engine, hf):
    model, extractor = hf
    wave = synthesize_speech("guten tag", voice="de")
    result = engine.transcribe((wave, RATE))
    feats = extractor(wave, sampling_rate=RATE, return_tensors="pt").input_features
    with torch.no_grad():
        lang_id = int(model.detect_language(feats)[0])
    assert engine.processor.tokens.languages[result.language] == lang_id


def test_cross_blocks_return_after_preemption_abort_with_async_scheduling(
    checkpoint, engine, hf, clips
):
    # 191 blocks: two requests (94 cross + 1 decoder block each) run, the newest is preempted
    # when both need a second decoder block.
    block_bytes = engine.config.kv_block_bytes
    engine = Engine(
        checkpoint,
        max_num_seqs=4,
        kv_cache_memory_bytes=191 * block_bytes,
        async_scheduling=True,  # overlapped steps: a fill step may still be in flight
    )
    selected = clips[:4]
    prompts = [
        {
            "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": audio}},
            "decoder_prompt": decoder_prompt(language, task),
        }
        for audio, _, language, task in selected
    ]
    outputs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=20))
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_free"] == engine.config.num_blocks
    for (_, wave, language, task), out in zip(selected, outputs, strict=True):
        ours = list(out.outputs[0].token_ids)
        assert ours == hf_tokens(hf, wave, language, task, 20)[: len(ours)]
    engine.add_request("a", prompts[0], SamplingParams(max_tokens=20))
    engine.step()
    assert engine.stats()["kv_blocks_used"] == 94 + 1
    engine.abort_request("a")
    engine.step()
    assert engine.stats()["kv_blocks_free"] == engine.config.num_blocks
    engine.scheduler.check_invariants()


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("<|startoftranscript|>", "needs audio input"),
        ({"encoder_prompt": {"prompt": "hi", "multi_modal_data": {"audio": "x"}}}, "no text"),
        ({"encoder_prompt": {"prompt": ""}}, "exactly one 'audio'"),
        ({"encoder_prompt": {"multi_modal_data": {"image": "x"}}}, "exactly one 'audio'"),
        ({"encoder_prompt": {"multi_modal_data": {"audio": []}}}, "one audio item"),
        ({"encoder_prompt": {"multi_modal_data": {}}, "extra": 1}, "unknown prompt fields"),
        ({"encoder_prompt": {"multi_modal_data": {}, "x": 1}}, "unknown encoder_prompt"),
        ({"encoder_prompt": {}, "decoder_prompt": {"text": "x"}}, "unknown decoder_prompt"),
        ({"prompt": "x", "multi_modal_data": {"audio": b"not audio" * 20}}, "audio"),
        ({"prompt": "x", "multi_modal_data": {"audio": (np.zeros(RATE * 31), RATE)}}, "30 s"),
    ],
)
def test_bad_prompts_are_value_errors(engine, prompt, fragment):
    with pytest.raises(ValueError, match=fragment):
        engine.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_free"] == engine.config.num_blocks


def test_bad_transcription_arguments_are_value_errors(engine):
    clip = (np.zeros(RATE, dtype=np.float32), RATE)
    with pytest.raises(ValueError, match="unsupported language"):
        engine.transcribe(clip, language="klingon")
    with pytest.raises(ValueError, match="task must be"):
        engine.transcribe(clip, language="en", task="summarize")
    with pytest.raises(ValueError, match="takes no audio placeholder"):
        engine.chat([{"role": "user", "content": "hello"}], use_tqdm=False)
