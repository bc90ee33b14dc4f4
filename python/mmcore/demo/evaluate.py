"""Accuracy of a shapes model per question type, through any generation backend.

The backend is a ``generate_fn(model_dir, images, questions) -> answers`` callable, so the same
questions run through Hugging Face ``generate()`` (:func:`hf_generate`) and through mmcore's
Engine (:func:`engine_generate`). Answers are compared after trimming spaces, case and a final
full stop. Three question sets (``DATASETS``): "held_out" (varied pictures of the training
generator, seeds it never used), "ood" (pictures drawn by :mod:`mmcore.demo.ood`, a different
code path) and "first_demo" (the first demo's 96 px pictures).

    python -m mmcore.demo.evaluate --model DIR --set ood --n 800 [--backend both]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from mmcore.demo import ood, scenes, shapes
from mmcore.demo.shapes import Sample

GenerateFn = Callable[[str | os.PathLike, Sequence[Image.Image], Sequence[str]], list[str]]
AnswerFn = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]


@dataclass
class EvalReport:
    """Per-question-type results of one evaluation."""

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    mistakes: list[tuple[str, str, str]] = field(default_factory=list)  # question, expected, got
    correct_flags: list[bool] = field(default_factory=list)  # one per question, in order

    @property
    def accuracy(self) -> dict[str, float]:
        """Fraction correct for each question type that was asked."""
        return {q: self.correct[q] / self.total[q] for q in self.total}

    def to_json(self) -> dict:
        """A JSON-ready summary (accuracy, counts and the first mistakes)."""
        return {
            "accuracy": {q: round(a, 4) for q, a in self.accuracy.items()},
            "total": dict(self.total),
            "mistakes": self.mistakes[:20],
        }


def normalize_answer(text: str) -> str:
    """Lower-case, trim spaces and a final full stop."""
    return text.strip().lower().rstrip(".").strip()


def score(samples: Sequence[Sample], answer_fn: AnswerFn, batch_size: int = 64) -> EvalReport:
    """Ask every sample's question and count exact answers per question type.

    Args:
        samples: pictures with questions and expected answers.
        answer_fn: ``answer_fn(images, questions) -> answers`` for a batch.
        batch_size: questions per call of ``answer_fn``.

    Returns:
        The per-type report.
    """
    report = EvalReport()
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        answers = answer_fn([s.image for s in batch], [s.question for s in batch])
        if len(answers) != len(batch):
            raise ValueError(
                f"answer_fn returned {len(answers)} answers for {len(batch)} questions"
            )
        for sample, got in zip(batch, answers):
            ok = normalize_answer(got) == normalize_answer(sample.answer)
            report.total[sample.qtype] = report.total.get(sample.qtype, 0) + 1
            report.correct[sample.qtype] = report.correct.get(sample.qtype, 0) + int(ok)
            report.correct_flags.append(ok)
            if not ok:
                report.mistakes.append((sample.question, sample.answer, got))
    return report


class HFGenerator:
    """Greedy answers from a Hugging Face LLaVA model and its processor, batched."""

    def __init__(self, model, processor, max_new_tokens: int = 32):
        """Args:
        model: a ``LlavaForConditionalGeneration`` (any device; inputs follow it).
        processor: its ``LlavaProcessor`` (with the chat template).
        max_new_tokens: generation limit per answer.
        """
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device: str = "cpu") -> HFGenerator:
        """Load a saved checkpoint in float32 on ``device``."""
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        return cls(model.to(device).eval(), AutoProcessor.from_pretrained(model_dir))

    def prompt(self, question: str) -> str:
        """The chat-formatted prompt for one picture and one question."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def __call__(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """Answer each question about its picture (greedy decoding).

        Args:
            images: one picture per question.
            questions: the user's questions.

        Returns:
            The decoded answers, special tokens removed.
        """
        import torch

        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        inputs = self.processor(
            text=[self.prompt(q) for q in questions],
            images=[im.convert("RGB") for im in images],
            return_tensors="pt",
            padding=True,
        ).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@functools.lru_cache(maxsize=4)
def _cached_generator(model_dir: str, device: str) -> HFGenerator:
    return HFGenerator.from_pretrained(model_dir, device)


def hf_generate(
    model_dir: str | os.PathLike,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    device: str = "cpu",
) -> list[str]:
    """A ``GenerateFn`` through Hugging Face ``generate()`` (model loaded once per folder).

    Args:
        model_dir: the checkpoint folder.
        images: one picture per question.
        questions: the questions.
        device: torch device to run on.

    Returns:
        Greedy answers.
    """
    return _cached_generator(os.fspath(model_dir), device)(images, questions)


@functools.lru_cache(maxsize=4)
def _cached_engine(model_dir: str, device: str):
    from mmcore import Engine

    return Engine(model_dir, device=device, seed=0)


def engine_generate(
    model_dir: str | os.PathLike,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    device: str = "auto",
) -> list[str]:
    """A ``GenerateFn`` through mmcore's ``Engine.chat`` (greedy, one engine per folder).

    Args:
        model_dir: the checkpoint folder.
        images: one picture per question.
        questions: the questions.
        device: "auto", "cpu" or "cuda".

    Returns:
        Greedy answers.
    """
    from mmcore import SamplingParams

    engine = _cached_engine(os.fspath(model_dir), device)
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
        for im, q in zip(images, questions)
    ]
    outputs = engine.chat(
        conversations, SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False
    )
    return [o.outputs[0].text.strip() for o in outputs]


def recording(generate_fn: GenerateFn, answers: list[str]) -> GenerateFn:
    """Wrap a backend so every answer it gives is also appended to ``answers`` (for agreement)."""

    def answer(model_dir, images, questions):
        got = generate_fn(model_dir, images, questions)
        answers.extend(got)
        return got

    return answer


def agreement(first: Sequence[str], second: Sequence[str]) -> float:
    """Fraction of answers two backends give identically (after normalisation)."""
    if len(first) != len(second) or not first:
        raise ValueError("agreement needs two non-empty answer lists of equal length")
    same = sum(normalize_answer(a) == normalize_answer(b) for a, b in zip(first, second))
    return same / len(first)


DATASETS = {
    "held_out": scenes.eval_samples,
    "ood": ood.ood_samples,
    "first_demo": shapes.eval_samples,
}


def question_set(dataset: str, n: int, seed: int) -> list[Sample]:
    """``n`` questions of one of ``DATASETS`` drawn with ``seed``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown question set {dataset!r}; expected one of {list(DATASETS)}")
    return DATASETS[dataset](n, seed)


def evaluate(
    model_dir: str | os.PathLike,
    n: int = 500,
    seed: int = 4242,
    generate_fn: GenerateFn = hf_generate,
    batch_size: int = 64,
    dataset: str = "held_out",
) -> EvalReport:
    """Accuracy of the model in ``model_dir`` per question type on one question set.

    Args:
        model_dir: the checkpoint folder (e.g. ``mmcore.demo.default_model_path()``).
        n: number of questions, spread evenly over the question types.
        seed: seed of the question set (training draws from other seeds).
        generate_fn: ``generate_fn(model_dir, images, questions) -> answers``.
        batch_size: questions per ``generate_fn`` call.
        dataset: one of ``DATASETS``.

    Returns:
        The per-type report.
    """
    samples = question_set(dataset, n, seed)
    return score(samples, lambda ims, qs: generate_fn(model_dir, ims, qs), batch_size)


def accuracy_by_group(samples: Sequence[ood.OodSample], report: EvalReport) -> dict:
    """Per-type accuracy of each drawing group of a scored out-of-distribution set.

    Args:
        samples: from :func:`mmcore.demo.ood.ood_samples`.
        report: :func:`score` of exactly these samples.

    Returns:
        ``{group: {qtype: accuracy}}``.
    """
    if len(report.correct_flags) != len(samples):
        raise ValueError("the report does not score these samples")
    hits: dict[str, dict[str, list[bool]]] = {}
    for sample, ok in zip(samples, report.correct_flags):
        hits.setdefault(sample.group, {}).setdefault(sample.qtype, []).append(ok)
    return {
        group: {q: round(sum(flags) / len(flags), 4) for q, flags in by_type.items()}
        for group, by_type in sorted(hits.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument(
        "--set", dest="dataset", choices=list(DATASETS), default="held_out", help="question set"
    )
    parser.add_argument("--n", type=int, default=500, help="number of questions")
    parser.add_argument("--seed", type=int, default=4242, help="seed of the question set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--backend", choices=["hf", "mmcore", "both"], default="hf", help="generation backend"
    )
    args = parser.parse_args(argv)
    backends = {
        "hf": functools.partial(hf_generate, device=args.device),
        "mmcore": functools.partial(engine_generate, device=args.device),
    }
    names = ["hf", "mmcore"] if args.backend == "both" else [args.backend]
    answers: dict[str, list[str]] = {}
    summary = {}
    for name in names:
        answers[name] = []
        backend = recording(backends[name], answers[name])
        report = evaluate(args.model, args.n, args.seed, backend, args.batch_size, args.dataset)
        summary[name] = report.to_json()
    if len(names) == 2:
        summary["agreement"] = round(agreement(answers["hf"], answers["mmcore"]), 4)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
