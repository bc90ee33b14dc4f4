"""Training batches for the demo model: varied pictures, several questions about each.

A batch holds ``pictures`` pictures from :mod:`mmcore.demo.scenes` (already at the model's
size, uint8) and ``questions`` different questions about each; the training step encodes every
picture once and gives its features to each of its questions (:func:`train.shared_image_loss`).
"""

from __future__ import annotations

import numpy as np
import torch

from mmcore.demo import build, patch_labels, scenes, shapes

# Binding a colour or a position to the named shape is the hardest skill: ask those most.
QTYPE_WEIGHTS = {"shape": 0.18, "colour": 0.26, "count": 0.12, "position": 0.22, "describe": 0.22}
NUM_SHAPES_WEIGHTS = (0.25, 0.35, 0.4)
# At the curriculum's start, half the pictures are the first demo's (one size, filled, grey):
# the pictures a vision tower trained from scratch first learned shapes on.
EASY_FIRST_DEMO_SHARE = 0.5


class SequenceEncoder:
    """Turns (question, answer) into training ids and labels, as the processor would."""

    def __init__(self, processor, num_image_tokens: int = build.NUM_IMAGE_TOKENS):
        self.processor = processor
        self.num_image_tokens = num_image_tokens
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(build.IMAGE_TOKEN)
        self._prompts: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        """Chat-formatted prompt ids with the image placeholder expanded (cached per question)."""
        ids = self._prompts.get(question)
        if ids is None:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
            ]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            ids = []
            for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
                ids.extend([t] * self.num_image_tokens if t == self.image_token_id else [t])
            self._prompts[question] = ids
        return ids

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """Ids of prompt + " answer</s>", and labels that are -100 outside the answer."""
        prompt = self.prompt_ids(question)
        target = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        target.append(self.tokenizer.eos_token_id)
        return prompt + target, [-100] * len(prompt) + target


def pixel_values(images) -> torch.Tensor:
    """CLIP-normalised (N, 3, S, S) float32 pixels of pictures already at the model's size."""
    return normalize(torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 pixels -> CLIP-normalised (N, 3, S, S) float32, on their device."""
    mean = torch.tensor(build.IMAGE_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(build.IMAGE_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def draw_pictures(
    rng: np.random.Generator,
    pictures: int,
    questions: int,
    ease: float = 0.0,
    first_demo_fraction: float = 0.0,
    num_shapes_weights: tuple[float, ...] = NUM_SHAPES_WEIGHTS,
    qtype_weights: dict[str, float] | None = None,
    label_grid: int = patch_labels.GRID,
    size: int = build.IMAGE_SIZE,
) -> list[shapes.Sample]:
    """``pictures`` varied pictures with ``questions`` distinct question types each, in order.

    Args:
        rng: the random generator.
        pictures: number of pictures.
        questions: questions per picture (1..5, distinct types drawn by QTYPE_WEIGHTS).
        ease: how easy the varied pictures are (see :func:`scenes.random_picture`).
        first_demo_fraction: share of pictures drawn by the first demo's generator
            (:mod:`mmcore.demo.shapes`: one size, filled, grey backgrounds); more while
            ``ease`` is above 0 (:func:`first_demo_share`).
        num_shapes_weights: how often pictures have 1, 2 and 3 shapes.
        qtype_weights: how often each question type is asked (default QTYPE_WEIGHTS).
        label_grid: patches per side for the pictures' token labels.
        size: the model's input side the pictures are resized to.

    Returns:
        ``pictures * questions`` samples; samples of one picture are consecutive.
    """
    qtype_weights = QTYPE_WEIGHTS if qtype_weights is None else qtype_weights
    types, weights = list(qtype_weights), np.asarray(list(qtype_weights.values()), dtype=float)
    if not 1 <= questions <= int((weights > 0).sum()):
        raise ValueError(
            f"questions per picture must be in 1..{int((weights > 0).sum())}, got {questions}"
        )
    shape_p = np.asarray(num_shapes_weights, dtype=float)
    out: list[shapes.Sample] = []
    demo_share = first_demo_share(ease, first_demo_fraction)
    for _ in range(pictures):
        num_shapes = 1 + int(rng.choice(shapes.MAX_SHAPES, p=shape_p / shape_p.sum()))
        picked = rng.choice(len(types), questions, replace=False, p=weights / weights.sum())
        qtypes = [types[i] for i in picked]
        if demo_share and rng.random() < demo_share:
            out += first_demo_samples(rng, num_shapes, qtypes, label_grid, size)
        else:
            out += scenes.make_samples(rng, num_shapes, qtypes, size, ease, label_grid)
    return out


def first_demo_samples(
    rng: np.random.Generator,
    num_shapes: int,
    qtypes: list[str],
    label_grid: int = patch_labels.GRID,
    size: int = build.IMAGE_SIZE,
) -> list[shapes.Sample]:
    """One first-demo picture (resized to the model's size) and one question per type."""
    items = shapes.random_items(rng, num_shapes)
    picture, masks = shapes.render_with_masks(items, rng)
    image = scenes.to_model_size(picture, size)
    labels = patch_labels.first_demo_labels(items, masks, label_grid)
    return [
        shapes.Sample(image, *shapes.question_answer(items, qtype, rng), qtype, patch_labels=labels)
        for qtype in qtypes
    ]


def first_demo_share(ease: float, fraction: float) -> float:
    """Share of first-demo pictures: ``fraction``, raised towards EASY_FIRST_DEMO_SHARE by ``ease``.

    Args:
        ease: the curriculum's ease (1 at the start, 0 once the full variety is reached).
        fraction: the share after the curriculum (0 turns first-demo pictures off).

    Returns:
        The share of pictures to draw with the first demo's generator.
    """
    if fraction <= 0:
        return 0.0
    return max(fraction, fraction + (EASY_FIRST_DEMO_SHARE - fraction) * ease)


def ease_at(step: int, ease_steps: int) -> float:
    """The curriculum: pictures start easy (1.0) and reach the full variety (0.0) at ``ease_steps``."""
    return max(0.0, 1.0 - step / ease_steps) if ease_steps > 0 else 0.0


def collate(samples, encoder: SequenceEncoder, questions: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels, and uint8 ``pixels`` per picture.

    Args:
        samples: consecutive groups of ``questions`` samples share one picture.
        encoder: the sequence encoder.
        questions: samples per picture.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` of shape (len(samples), L), ``pixels``
        of shape (len(samples) // questions, S, S, 3) and, when every picture has them,
        ``patch_labels`` of shape (len(samples) // questions, 3, NUM_TOKENS).
    """
    encoded = [encoder.encode(s.question, s.answer) for s in samples]
    width = max(len(ids) for ids, _ in encoded)
    pad = encoder.tokenizer.pad_token_id
    input_ids = torch.full((len(samples), width), pad, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    firsts = samples[::questions]
    pictures = [np.asarray(s.image, dtype=np.uint8) for s in firsts]
    batch = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "pixels": torch.from_numpy(np.stack(pictures)),
    }
    if all(s.patch_labels is not None for s in firsts):
        batch["patch_labels"] = torch.from_numpy(np.stack([s.patch_labels for s in firsts]))
    return batch


class PictureStream(torch.utils.data.IterableDataset):
    """An endless stream of collated batches; each worker draws from its own seeded generator.

    The data loader takes batches from its workers in turn, so a worker's n-th batch is about
    training step ``n * workers``: that step sets the curriculum's ease (:func:`ease_at`).
    """

    def __init__(
        self,
        processor,
        pictures: int,
        questions: int,
        seed: int,
        ease_steps: int = 0,
        first_demo_fraction: float = 0.0,
        image_size: int = build.IMAGE_SIZE,
    ):
        super().__init__()
        self.encoder = SequenceEncoder(processor, build.num_image_tokens(image_size))
        self.image_size = image_size
        self.pictures, self.questions, self.seed = pictures, questions, seed
        self.ease_steps, self.first_demo_fraction = ease_steps, first_demo_fraction

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id + 1])
        n = 0
        while True:
            ease = ease_at(n * workers + worker, self.ease_steps)
            samples = draw_pictures(
                rng,
                self.pictures,
                self.questions,
                ease,
                self.first_demo_fraction,
                label_grid=self.image_size // build.PATCH_SIZE,
                size=self.image_size,
            )
            yield collate(samples, self.encoder, self.questions)
            n += 1
