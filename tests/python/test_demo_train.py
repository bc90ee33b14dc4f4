"""The demo training script: its batches match the processor, and a short run saves a model."""

import json

import numpy as np
import pytest
import torch

from mmcore.demo import build, shapes, train


@pytest.fixture(scope="module")
def processor():
    return build.build_processor(build.build_tokenizer())


def test_training_sequence_is_what_the_processor_makes_of_the_conversation(processor):
    encoder = train.SequenceEncoder(processor)
    rng = np.random.default_rng(1)
    for qtype in shapes.QUESTION_TYPES:
        sample = shapes.make_sample(rng, qtype, 3)
        ids, labels = encoder.encode(sample.question, sample.answer)
        conversation = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": sample.question}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]},
        ]
        text = processor.apply_chat_template(conversation)
        assert text.endswith(f"ASSISTANT: {sample.answer}</s>")
        expected = processor(text=[text], images=[sample.image], return_tensors="pt")
        assert expected["input_ids"][0].tolist() == ids
        # The loss sees only the answer and the end of sequence.
        answer_ids = [t for t in labels if t != -100]
        assert processor.tokenizer.decode(answer_ids) == f" {sample.answer}</s>"
        assert labels[-len(answer_ids) :] == ids[-len(answer_ids) :]
        torch.testing.assert_close(
            train.pixel_values([sample.image]), expected["pixel_values"], atol=1e-6, rtol=0
        )


def test_collate_pads_on_the_right_and_masks_padding(processor):
    encoder = train.SequenceEncoder(processor)
    rng = np.random.default_rng(2)
    samples = [shapes.make_sample(rng, q, 2) for q in ("count", "describe")]
    batch = train.collate(samples, encoder)
    lengths = [len(encoder.encode(s.question, s.answer)[0]) for s in samples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = min(range(2), key=lambda i: lengths[i])
    pad = processor.tokenizer.pad_token_id
    assert (batch["input_ids"][short, lengths[short] :] == pad).all()
    assert (batch["labels"][short, lengths[short] :] == -100).all()
    image_id = processor.tokenizer.convert_tokens_to_ids(build.IMAGE_TOKEN)
    assert ((batch["input_ids"] == image_id).sum(1) == build.NUM_IMAGE_TOKENS).all()


def test_learning_rate_warms_up_then_decays_to_five_percent():
    lrs = [train.lr_at(step, 1000, 1e-3, 100) for step in range(1001)]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[99] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[1000] == pytest.approx(5e-5)


def test_a_short_cpu_run_saves_a_loadable_checkpoint(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "ckpt"
    argv = ["--out", str(out), "--device", "cpu", "--steps", "2", "--batch-size", "4"]
    argv += ["--workers", "0", "--eval-every-s", "0", "--final-questions", "0"]
    assert train.main(argv) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu"
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == summary["num_parameters"]
    proc = AutoProcessor.from_pretrained(out)
    assert proc.tokenizer.convert_tokens_to_ids(build.IMAGE_TOKEN) == model.config.image_token_index
    assert (out / "chat_template.jinja").is_file()


def test_cuda_without_a_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--device", "cuda"])
