"""Train the shapes demo model: a small LLaVA (CLIP vision tower + projector + Llama).

    python -m mmcore.demo.train --out DIR [--device cuda|cpu] [--minutes M] [--seed S]

One command trains, saves the checkpoint (bfloat16 weights) into DIR and evaluates the saved
checkpoint through Hugging Face generate(): held-out varied pictures (every question type,
target >= 99% each), the out-of-distribution set of :mod:`mmcore.demo.ood` (shape, colour, count
and position, target >= 95% each) and the first demo's pictures; the accuracies go into
DIR/training_summary.json. Pictures and questions are drawn afresh for every batch by data-loader
workers (the stream never repeats); each picture is encoded once and asked several questions.
The loss covers only the answer tokens, and the learning rate follows a warm-up and a cosine
decay over a step count chosen to fill ``--minutes`` (measured after the first steps and logged;
``--steps N`` fixes it, to repeat a run). The default budget is sized for one H200 (the whole
command in about 8.5 minutes); on a CPU it runs, slowly. Training starts with large filled
shapes and reaches the full variety of pictures by ``--ease-steps`` (a curriculum). A
training-only head asks every image token which shape, colour and third it shows
(``--patch-loss-weight``, :mod:`mmcore.demo.patch_head`), and the vision tower's position
embeddings start as 2-D sines and cosines (``--position-init``, :mod:`mmcore.demo.position_init`);
neither changes the saved checkpoint's architecture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mmcore.demo
from mmcore.demo import batches, build, evaluate, ood, patch_head, position_init, scenes, shapes

TARGETS = {"held_out": 0.99, "ood": 0.95}
_PLAN_AT = (50, 500, 2000)  # steps at which the step count is planned from the measured rate


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The projector's output for uint8 (N, S, S, 3) pictures: (N, NUM_IMAGE_TOKENS, hidden)."""
    inner = model.model
    hidden = inner.vision_tower(batches.normalize(pixels), output_hidden_states=True)
    return inner.multi_modal_projector(hidden.hidden_states[-1][:, 1:])  # drop CLS


def shared_image_loss(
    model, batch: dict[str, torch.Tensor], questions: int, features: torch.Tensor | None = None
) -> torch.Tensor:
    """The LLaVA loss with each picture encoded once and used by its ``questions`` sequences.

    Equal to ``model(input_ids, pixel_values=<each picture repeated>, ...).loss`` (a test
    checks it) at a fraction of the vision tower's cost.

    Args:
        model: a ``LlavaForConditionalGeneration`` ("default" feature strategy, last layer).
        batch: from :func:`batches.collate` (``pixels`` uint8, one per picture), on the model's
            device.
        questions: sequences per picture.
        features: :func:`image_features` of the batch's pictures, when already computed.

    Returns:
        The mean cross-entropy over answer tokens.
    """
    if features is None:
        features = image_features(model, batch["pixels"])
    features = features.repeat_interleave(questions, dim=0)
    input_ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(input_ids)
    image_token = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    is_image = (input_ids == image_token).unsqueeze(-1)
    embeds = embeds.masked_scatter(is_image, features.to(embeds.dtype))
    out = model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    return out.loss


def training_loss(
    model, head, batch: dict[str, torch.Tensor], questions: int, patch_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The answer loss plus ``patch_weight`` times the patch labels' loss (:mod:`patch_head`).

    Args:
        model: the LLaVA model.
        head: the :class:`patch_head.PatchHead`, or None (no patch loss).
        batch: from :func:`batches.collate`, on the model's device (with ``patch_labels``
            when ``head`` is given).
        questions: sequences per picture.
        patch_weight: weight of the patch loss.

    Returns:
        (total loss, answer loss, patch loss (0 without a head), the projector's output).
    """
    features = image_features(model, batch["pixels"])
    answer = shared_image_loss(model, batch, questions, features)
    if head is None:
        return answer, answer, torch.zeros((), device=answer.device), features
    patch = patch_head.patch_loss(head, features, batch["patch_labels"])
    return answer + patch_weight * patch, answer, patch, features


def _optimizer(modules, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), fused=torch.cuda.is_available())


def _accuracy(model, processor, samples, max_new_tokens: int) -> dict[str, float]:
    generator = evaluate.HFGenerator(model, processor, max_new_tokens)
    report = evaluate.score(samples, generator, batch_size=256)
    return {q: round(a, 4) for q, a in report.accuracy.items()}


def final_evaluation(out: Path, args: argparse.Namespace) -> dict:
    """Accuracy of the saved checkpoint on the held-out, out-of-distribution and first sets."""
    generator = evaluate.HFGenerator.from_pretrained(out, args.device)
    generator.max_new_tokens = args.max_new_tokens
    sets = {
        "held_out": scenes.eval_samples(args.final_questions, args.eval_seed),
        "ood": ood.ood_samples(args.ood_questions, args.ood_seed),
        "first_demo": shapes.eval_samples(args.final_questions // 4, args.eval_seed),
    }
    results = {}
    for name, samples in sets.items():
        report = evaluate.score(samples, generator, batch_size=256)
        results[name] = report.to_json()
        print(f"{name} accuracy {results[name]['accuracy']}", flush=True)
        if name == "ood":
            results["ood_by_group"] = evaluate.accuracy_by_group(samples, report)
            print(f"ood accuracy by group {results['ood_by_group']}", flush=True)
    # The README's first command asks about the bundled example picture: it must stay right.
    example = Image.open(mmcore.demo.example_image_path()).convert("RGB")
    questions = list(mmcore.demo.EXAMPLE_QUESTIONS)
    answers = generator([example] * len(questions), questions)
    results["example"] = dict(zip(questions, answers))
    example_right = all(
        evaluate.normalize_answer(got) == evaluate.normalize_answer(want)
        for got, want in zip(answers, mmcore.demo.EXAMPLE_QUESTIONS.values())
    )
    print(f"example picture answered right: {example_right} {results['example']}", flush=True)
    results["meets_targets"] = example_right and all(
        min(results[name]["accuracy"].values()) >= target for name, target in TARGETS.items()
    )
    print(f"meets targets {TARGETS}: {results['meets_targets']}", flush=True)
    return results


def load_resized(init_from, config):
    """A saved run's model (float32) for ``config``'s input size: positions resized if it differs.

    Args:
        init_from: folder of a checkpoint this module saved.
        config: the LLaVA config to train (its vision ``image_size`` may differ from the saved).

    Returns:
        The model with the saved weights, the vision position table resized to the new grid.
    """
    from transformers import LlavaForConditionalGeneration

    saved = LlavaForConditionalGeneration.from_pretrained(init_from, dtype=torch.float32)
    if saved.config.vision_config.image_size == config.vision_config.image_size:
        return saved
    grid = config.vision_config.image_size // config.vision_config.patch_size
    state = saved.state_dict()
    key = next(k for k in state if k.endswith("embeddings.position_embedding.weight"))
    state[key] = position_init.resize_position_embeddings(state[key], grid)
    model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the position-id buffer differs in shape; the new model's own is the right one.
    problems = [k for k in missing + unexpected if not k.endswith("position_ids")]
    if problems:
        raise ValueError(f"{init_from} does not match the demo model: {problems[:5]}")
    print(f"init from {init_from}: position embeddings resized to {grid} x {grid}", flush=True)
    return model


def train(args: argparse.Namespace) -> dict:
    """Build, train, save and evaluate the model; returns the summary (also saved as JSON)."""
    from transformers import LlavaForConditionalGeneration

    start = time.monotonic()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    tokenizer = build.build_tokenizer()
    processor = build.build_processor(tokenizer, args.image_size)
    config = build.build_config(tokenizer, args.image_size)
    grid = args.image_size // build.PATCH_SIZE
    if args.init_from:  # go on from a saved run (its weights in float32; a fresh schedule)
        model = load_resized(args.init_from, config).to(device).train()
    else:
        model = LlavaForConditionalGeneration(config).to(device).train()
        if args.position_init == "sincos":
            rng = np.random.default_rng([args.seed, 7])
            pictures = batches.draw_pictures(rng, 64, 1, label_grid=grid, size=args.image_size)
            pixels = batches.pixel_values([s.image for s in pictures]).to(device)
            rms = position_init.init_position_embeddings(model.model.vision_tower, pixels)
            print(f"position embeddings: 2-D sin-cos at rms {rms:.3f}", flush=True)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model: {num_params / 1e6:.2f}M parameters on {device}", flush=True)

    workers = args.workers
    stream = batches.PictureStream(
        processor,
        args.pictures_per_batch,
        args.questions_per_picture,
        args.seed,
        ease_steps=args.ease_steps,
        first_demo_fraction=args.first_demo_fraction,
        image_size=args.image_size,
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=bool(workers),
    )
    # Training only: the head is not part of the model and is not saved.
    head = None
    if args.patch_loss_weight > 0:
        head = patch_head.PatchHead(config.text_config.hidden_size).to(device).train()
    modules = [model] + ([head] if head is not None else [])
    optimizer = _optimizer(modules, args.lr, args.weight_decay)
    use_bf16 = device.type == "cuda"
    probes = {}
    if args.eval_every_s:
        probes = {
            "held_out": scenes.eval_samples(args.probe_questions, args.seed + 1_000_003),
            "ood": ood.ood_samples(args.probe_questions, args.seed + 2_000_003),
        }
    budget_s = args.minutes * 60.0
    total = args.steps or 10**9
    history = []
    step, t_train, t_eval = 0, time.monotonic(), time.monotonic()
    data_wait_s, t_ready = 0.0, time.monotonic()
    plan_step, plan_time = 0, t_train
    for batch in loader:
        # Time spent waiting for the data-loader workers (high: the pictures are the bottleneck).
        data_wait_s += time.monotonic() - t_ready
        if step >= total or (not args.steps and time.monotonic() - start > budget_s):
            break
        if not args.steps and step in _PLAN_AT:
            # Fill the time budget: the rate since the last plan (past the workers' start-up,
            # which made the first run plan a third too few steps) tells the steps left.
            now = time.monotonic()
            rate = (step - plan_step) / (now - plan_time)
            total = step + int(rate * (budget_s - (now - start) - 20.0))
            plan_step, plan_time = step, now
            print(f"step {step}: {rate:.1f} steps/s, planning {total} steps", flush=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, answer_loss, patch, features = training_loss(
                model, head, batch, args.questions_per_picture, args.patch_loss_weight
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in modules for p in m.parameters()], 1.0)
        optimizer.step()
        step += 1
        if step % args.log_every == 0 or step == total:
            elapsed = time.monotonic() - start
            lr = lr_at(step, total, args.lr, args.warmup)
            wait = data_wait_s / max(1e-9, time.monotonic() - t_train)
            line = f"step {step}/{total} loss {answer_loss.item():.4f}"
            if head is not None:
                acc = patch_head.patch_accuracy(head, features.detach(), batch["patch_labels"])
                line += f" patch loss {patch.item():.4f} patch accuracy {acc}"
            print(f"{line} lr {lr:.2e} t {elapsed:.0f}s data wait {wait:.0%}", flush=True)
        if probes and time.monotonic() - t_eval > args.eval_every_s:
            model.eval()
            acc = {
                name: _accuracy(model, processor, s, args.max_new_tokens)
                for name, s in probes.items()
            }
            model.train()
            history.append({"step": step, "seconds": round(time.monotonic() - start), **acc})
            print(f"step {step} probe accuracy {acc}", flush=True)
            t_eval = time.monotonic()
        t_ready = time.monotonic()
    train_seconds = time.monotonic() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # bfloat16 weights halve the checkpoint; the evaluation below loads exactly these.
    model.eval().to(getattr(torch, args.save_dtype)).save_pretrained(out)
    # Only a copy of config.json's token ids (both loaders derive it): the folder stays at
    # seven files, which a GPU machine's eight-file result limit returns whole.
    (out / "generation_config.json").unlink(missing_ok=True)
    processor.save_pretrained(out)
    summary = {
        "command": "python -m mmcore.demo.train " + " ".join(args.argv),
        "seed": args.seed,
        "steps": step,
        "pictures_per_batch": args.pictures_per_batch,
        "questions_per_picture": args.questions_per_picture,
        "ease_steps": args.ease_steps,
        "first_demo_fraction": args.first_demo_fraction,
        "patch_loss_weight": args.patch_loss_weight,
        "position_init": args.position_init,
        "image_size": args.image_size,
        "train_seconds": round(train_seconds),
        "data_wait_seconds": round(data_wait_s),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_parameters": num_params,
        "probe_history": history,
    }
    if args.final_questions:
        summary.update(final_evaluation(out, args))
    summary["total_seconds"] = round(time.monotonic() - start)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    # The accuracies also go to the log, in case the folder does not come back.
    brief = {k: v for k, v in summary.items() if k not in ("probe_history", *TARGETS, "first_demo")}
    for name in (*TARGETS, "first_demo"):
        if name in summary:
            brief[name] = summary[name]["accuracy"]
    print("summary " + json.dumps(brief), flush=True)
    print(f"saved {out} in {summary['total_seconds']}s", flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m mmcore.demo.train``."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the checkpoint")
    p.add_argument("--device", default=default_device, choices=["cuda", "cpu"])
    p.add_argument(
        "--minutes",
        type=float,
        default=8.0,
        help="training budget, setup included (not the final evaluation)",
    )
    p.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pictures-per-batch", type=int, default=256)
    p.add_argument("--questions-per-picture", type=int, default=4, help="1..5 (distinct types)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument(
        "--ease-steps",
        type=int,
        default=2500,
        help="curriculum: pictures go from large filled shapes to the full variety over these steps",
    )
    p.add_argument(
        "--first-demo-fraction",
        type=float,
        default=0.15,
        help="share of training pictures drawn by the first demo's generator (50%% at the start)",
    )
    p.add_argument(
        "--patch-loss-weight",
        type=float,
        default=0.5,
        help="weight of the training-only loss on each image token's shape, colour and third "
        "(mmcore.demo.patch_head; 0: off)",
    )
    p.add_argument(
        "--init-from",
        help="a checkpoint this command saved: train on from its weights (with a new learning "
        "rate schedule; e.g. --ease-steps 0 --lr 3e-4) instead of from random ones",
    )
    p.add_argument(
        "--position-init",
        default="sincos",
        choices=["sincos", "clip"],
        help="start of the vision tower's position embeddings: 2-D sin-cos as loud as the "
        "patches (mmcore.demo.position_init; the shipped run's) or CLIP's (std 0.02)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=build.IMAGE_SIZE,
        help=f"the vision tower's input side in px (a multiple of {build.PATCH_SIZE}); with "
        "--init-from at another size the position embeddings are resized",
    )
    p.add_argument("--log-every", type=int, default=250, help="steps between log lines")
    p.add_argument("--workers", type=int, default=min(14, max(0, (os.cpu_count() or 2) - 2)))
    p.add_argument("--eval-every-s", type=float, default=90.0, help="probe period (0: off)")
    p.add_argument("--probe-questions", type=int, default=200)
    p.add_argument(
        "--final-questions", type=int, default=1000, help="held-out questions at the end (0: none)"
    )
    p.add_argument("--ood-questions", type=int, default=800, help="out-of-distribution questions")
    p.add_argument("--eval-seed", type=int, default=4242)
    p.add_argument("--ood-seed", type=int, default=7)
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length in evaluations")
    p.add_argument("--save-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    try:
        build.check_image_size(args.image_size)
    except ValueError as e:
        p.error(f"--image-size: {e}")
    if not 1 <= args.questions_per_picture <= len(shapes.QUESTION_TYPES):
        p.error(f"--questions-per-picture must be in 1..{len(shapes.QUESTION_TYPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
