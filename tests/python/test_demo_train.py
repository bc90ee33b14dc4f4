"""The demo training script: its batches match the processor, and a short run saves a model."""

import json

import numpy as np
import pytest
import torch

import mmcore.demo
from mmcore.demo import batches, build, evaluate, scenes, shapes, train

CHECKPOINT_FILES = [
    "chat_template.jinja",
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_summary.json",
]


@pytest.fixture(scope="module")
def processor():
    return build.build_processor(build.build_tokenizer())


def test_training_sequence_is_what_the_processor_makes_of_the_conversation(processor):
    encoder = batches.SequenceEncoder(processor)
    rng = np.random.default_rng(1)
    for sample in scenes.make_samples(rng, 3, list(shapes.QUESTION_TYPES), build.IMAGE_SIZE):
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
            batches.pixel_values([sample.image]), expected["pixel_values"], atol=1e-6, rtol=0
        )


def test_training_pictures_are_what_the_processor_makes_of_the_canvas(processor):
    # Training resizes pictures in the workers; the processor must make the same of the canvas.
    rng = np.random.default_rng(4)
    for num_shapes in (1, 2, 3):
        picture = scenes.random_picture(rng, num_shapes)
        resized = scenes.to_model_size(picture.image, build.IMAGE_SIZE)
        expected = processor.image_processor(images=[picture.image], return_tensors="pt")
        torch.testing.assert_close(
            batches.pixel_values([resized]), expected["pixel_values"], atol=1e-6, rtol=0
        )


def test_shared_image_loss_equals_the_loss_with_each_picture_repeated(processor):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(build.build_config(processor.tokenizer)).eval()
    samples = batches.draw_pictures(np.random.default_rng(5), 3, 2)
    batch = batches.collate(samples, batches.SequenceEncoder(processor), questions=2)
    assert batch["pixels"].shape == (3, build.IMAGE_SIZE, build.IMAGE_SIZE, 3)
    assert batch["input_ids"].shape[0] == 6
    with torch.no_grad():
        shared = train.shared_image_loss(model, batch, questions=2)
        repeated = batches.normalize(batch["pixels"]).repeat_interleave(2, dim=0)
        reference = model(
            input_ids=batch["input_ids"],
            pixel_values=repeated,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
        # Giving a picture to the wrong questions changes the loss: the test can fail.
        swapped = dict(batch, pixels=batch["pixels"].flip(0))
        wrong = train.shared_image_loss(model, swapped, questions=2)
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-5)
    assert abs(wrong.item() - reference.item()) > 1e-4


def test_pictures_get_distinct_question_types_in_order():
    samples = batches.draw_pictures(np.random.default_rng(6), 5, 4)
    assert len(samples) == 20
    for start in range(0, 20, 4):
        group = samples[start : start + 4]
        assert len({s.qtype for s in group}) == 4
        assert all(s.image is group[0].image for s in group)
    with pytest.raises(ValueError, match="questions per picture"):
        batches.draw_pictures(np.random.default_rng(6), 1, 6)


def test_curriculum_starts_with_large_filled_shapes_and_reaches_the_full_variety():
    assert [batches.ease_at(s, 100) for s in (0, 50, 100, 500)] == [1.0, 0.5, 0.0, 0.0]
    assert batches.ease_at(0, 0) == 0.0
    # Half the first pictures are the first demo's, then the given share; 0 turns them off.
    shares = [batches.first_demo_share(e, 0.15) for e in (1.0, 0.5, 0.0)]
    assert shares == pytest.approx([0.5, 0.325, 0.15])
    assert batches.first_demo_share(1.0, 0.0) == 0.0
    rng = np.random.default_rng(8)
    for num_shapes in (1, 2, 3, 3):
        picture = scenes.random_picture(rng, num_shapes, ease=1.0)
        longer = max(picture.image.size)
        # At least 90% of EASY_MIN_SIZE of the longer side (less only where three must fit).
        assert all(2 * it.radius >= 0.2 * 0.9 * longer - 1 for it in picture.items)
        assert {s.style for s in picture.strokes} == {"fill"}


def test_first_demo_pictures_join_the_batches_at_the_model_size():
    samples = batches.draw_pictures(np.random.default_rng(3), 8, 2, first_demo_fraction=1.0)
    assert all(s.image.size == (build.IMAGE_SIZE, build.IMAGE_SIZE) for s in samples)
    # The first demo's mid-grey backgrounds (clamped to 45..205), never white or black.
    corners = np.stack([np.asarray(s.image)[[0, 0, -1, -1], [0, -1, 0, -1]] for s in samples])
    assert corners.min() >= 35 and corners.max() <= 215


def test_collate_pads_on_the_right_and_masks_padding(processor):
    encoder = batches.SequenceEncoder(processor)
    rng = np.random.default_rng(2)
    samples = scenes.make_samples(rng, 2, ["count", "describe"], build.IMAGE_SIZE)
    batch = batches.collate(samples, encoder, questions=2)
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
    argv = ["--out", str(out), "--device", "cpu", "--steps", "2", "--pictures-per-batch", "2"]
    argv += ["--questions-per-picture", "2", "--workers", "0", "--eval-every-s", "0"]
    argv += ["--final-questions", "5", "--ood-questions", "12", "--max-new-tokens", "2"]
    argv += ["--position-init", "clip"]  # the non-default start runs too
    assert train.main(argv) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu"
    # The saved checkpoint was evaluated on every set (an untrained model answers wrong).
    assert set(summary["held_out"]["accuracy"]) == set(shapes.QUESTION_TYPES)
    assert set(summary["ood"]["accuracy"]) == {"shape", "colour", "count", "position"}
    assert summary["ood"]["total"] == {"shape": 3, "colour": 3, "count": 3, "position": 3}
    assert summary["first_demo"]["total"] == {"shape": 1}
    assert summary["meets_targets"] is False
    assert set(summary["example"]) == set(mmcore.demo.EXAMPLE_QUESTIONS)
    # Seven files: a GPU machine hands back at most eight.
    assert sorted(p.name for p in out.iterdir()) == sorted(CHECKPOINT_FILES)
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert model.config.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == summary["num_parameters"]
    assert (out / "model.safetensors").stat().st_size < 12 * 1024 * 1024
    proc = AutoProcessor.from_pretrained(out)
    assert proc.tokenizer.convert_tokens_to_ids(build.IMAGE_TOKEN) == model.config.image_token_index
    assert (out / "chat_template.jinja").is_file()
    # The training-only patch head trained (its loss is logged) but is not in the checkpoint:
    # the saved tensors are exactly those of a plain LLaVA model of the demo's config.
    assert summary["patch_loss_weight"] > 0 and summary["position_init"] == "clip"
    from safetensors import safe_open

    def tensor_names(folder):
        with safe_open(folder / "model.safetensors", "pt") as saved:
            return set(saved.keys())

    LlavaForConditionalGeneration(build.build_config(proc.tokenizer)).save_pretrained(
        tmp_path / "plain"
    )
    assert tensor_names(out) == tensor_names(tmp_path / "plain")
    # mmcore's Engine runs it and picks the same tokens as HF generate() (greedy, float32).
    from mmcore import Engine, SamplingParams

    def upto_eos(ids):
        eos = proc.tokenizer.eos_token_id
        return ids[: ids.index(eos)] if eos in ids else ids

    samples = scenes.eval_samples(3, seed=11)
    hf = evaluate.HFGenerator.from_pretrained(out)
    engine = Engine(str(out), device="cpu", seed=0)
    for sample in samples:
        inputs = proc(text=[hf.prompt(sample.question)], images=[sample.image], return_tensors="pt")
        with torch.no_grad():
            ids = hf.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        want = ids[0, inputs["input_ids"].shape[1] :].tolist()
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": sample.image},
                    {"type": "text", "text": sample.question},
                ],
            }
        ]
        got = engine.chat([conversation], SamplingParams(temperature=0.0, max_tokens=4))
        assert upto_eos(list(got[0].outputs[0].token_ids)) == upto_eos(want)


def test_cuda_without_a_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--device", "cuda"])


def _one_step_then_continued(tmp_path, *continued_args: str):
    """A one-step CPU run, then a one-step run going on from it at zero learning rate (with
    ``continued_args``); returns both checkpoint folders."""
    argv = ["--device", "cpu", "--pictures-per-batch", "2", "--questions-per-picture", "2"]
    argv += ["--workers", "0", "--eval-every-s", "0", "--final-questions", "5"]
    argv += ["--ood-questions", "12", "--max-new-tokens", "2", "--save-dtype", "float32"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert train.main(["--out", str(first), "--steps", "1", *argv]) == 0
    more = ["--init-from", str(first), "--steps", "1", "--lr", "0", "--weight-decay", "0"]
    assert train.main(["--out", str(second), *continued_args, *more, *argv]) == 0
    return first, second


def test_init_from_goes_on_from_the_saved_weights(tmp_path):
    from transformers import LlavaForConditionalGeneration

    # Zero learning rate: the continued run saves exactly the weights it started from.
    first, second = _one_step_then_continued(tmp_path)
    a = LlavaForConditionalGeneration.from_pretrained(first).state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(second).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((second / "training_summary.json").read_text())
    assert "--init-from" in summary["command"]


def test_resized_position_table_keeps_the_class_row_and_each_patch_where_it_lies():
    from mmcore.demo import position_init

    # A table linear in x and y stays near-linear (torch's bicubic, a = -0.75, is not exact).
    grid, dim = 14, 8
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    table = torch.zeros(1 + grid * grid, dim)
    table[0] = 7.0
    table[1:, 0] = (xs.reshape(-1).float() + 0.5) / grid
    table[1:, 1] = (ys.reshape(-1).float() + 0.5) / grid
    resized = position_init.resize_position_embeddings(table, 20)
    assert resized.shape == (1 + 20 * 20, dim)
    assert torch.equal(resized[0], table[0])
    new = resized[1:].reshape(20, 20, dim)
    centres = (torch.arange(20).float() + 0.5) / 20
    inner = slice(3, 17)
    assert torch.allclose(new[inner, inner, 0], centres[inner].expand(14, 14), atol=5e-3)
    assert torch.allclose(new[inner, inner, 1], centres[inner, None].expand(14, 14), atol=5e-3)
    assert torch.equal(position_init.resize_position_embeddings(table, grid), table)
    with pytest.raises(ValueError, match="square grid"):
        position_init.resize_position_embeddings(table[:-1], 20)


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        build.build_config(build.build_tokenizer(), 100)
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path), "--device", "cpu", "--image-size", "100"])


def test_init_from_at_another_image_size_trains_the_resized_model(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    first, second = _one_step_then_continued(tmp_path, "--image-size", "64")
    a = LlavaForConditionalGeneration.from_pretrained(first)
    b = LlavaForConditionalGeneration.from_pretrained(second)
    assert b.config.vision_config.image_size == 64 and b.config.image_seq_length == 64
    sa, sb = a.state_dict(), b.state_dict()
    key = next(k for k in sa if k.endswith("position_embedding.weight"))
    assert sb[key].shape == (1 + 8 * 8, sa[key].shape[1])
    # Every other weight goes on unchanged (zero learning rate).
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k != key and "position_ids" not in k)
    proc = AutoProcessor.from_pretrained(second)
    assert proc.image_processor.size == {"height": 64, "width": 64}
    # The saved processor expands the placeholder to the resized tower's 64 tokens.
    inputs = proc(text=["<image> hi"], images=[scenes.eval_samples(1, 3)[0].image])
    assert inputs["input_ids"][0].count(b.config.image_token_index) == 64
    summary = json.loads((second / "training_summary.json").read_text())
    assert summary["image_size"] == 64
