"""Does the patch-label loss teach the demo model to find a shape by its name? A CPU experiment.

A reduced task that a CPU trains in minutes: pictures of two shapes (by default the first demo's
pictures: one size, filled, on shaded grey; ``--pictures easy``: the curriculum's easiest varied
pictures, large and filled), the three look-up questions ("What colour is the star?",
"Where is the star?", "What shape is the red one?") and a reduced model of the demo's kind
(CLIP 96 x 3 layers with 16 px patches: 49 image tokens; Llama 128 x 2 layers). The same seeded
run with ``--patch-loss-weight 0`` (no patch loss) and with it on shows whether the name look-ups
rise above chance (0.5 with two shapes) sooner with the patch loss.

    python bench/demo_lookup_cpu.py --patch-loss-weight 0.5 --minutes 10 --threads 1
    python bench/demo_lookup_cpu.py --patch-loss-weight 0 --minutes 10 --threads 1

Prints one JSON line per probe (step, seconds, answer loss, accuracy per question type) and a
final ``result {...}`` line; ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mmcore.demo import batches, build, evaluate, patch_head, position_init, train

PATCH = 16  # a 7 x 7 grid of image tokens on the model's 112 px pictures
GRID = build.IMAGE_SIZE // PATCH
LOOKUP_WEIGHTS = {"shape": 1.0, "colour": 1.0, "position": 1.0}


def reduced_model(tokenizer):
    """The demo's LLaVA at a size a CPU trains in minutes (same kinds of parts)."""
    from transformers import LlavaForConditionalGeneration

    config = build.build_config(tokenizer)
    vision, text = config.vision_config, config.text_config
    vision.hidden_size, vision.intermediate_size = 96, 384
    vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size = 3, 3, PATCH
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 128, 384, 2
    config.image_seq_length = GRID * GRID
    return LlavaForConditionalGeneration(config)


def draw(rng: np.random.Generator, pictures: int, kind: str) -> list:
    """``pictures`` two-shape pictures of ``kind`` with the three look-up questions each."""
    return batches.draw_pictures(
        rng, pictures, 3, ease=1.0, first_demo_fraction=1.0 if kind == "first_demo" else 0.0,
        num_shapes_weights=(0.0, 1.0, 0.0), qtype_weights=LOOKUP_WEIGHTS, label_grid=GRID,
    )  # fmt: skip


def lookup_set(n: int, seed: int, kind: str) -> list:
    """Held-out two-shape pictures of ``kind``, the three look-up question types in turn."""
    samples = draw(np.random.default_rng([seed, 0x100C]), n, kind)
    return [samples[3 * i + i % 3] for i in range(n)]


def run(args: argparse.Namespace) -> dict:
    """Train the reduced model on the reduced task and probe it; returns the result."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build.build_tokenizer()
    processor = build.build_processor(tokenizer)
    processor.patch_size = PATCH  # expands <image> to GRID * GRID tokens, as the model takes
    model = reduced_model(tokenizer).train()
    if args.position_init == "sincos":
        pictures = draw(np.random.default_rng([args.seed, 7]), 64, args.pictures_kind)[::3]
        pixels = batches.pixel_values([s.image for s in pictures])
        position_init.init_position_embeddings(model.model.vision_tower, pixels)
    head = (
        patch_head.PatchHead(model.config.text_config.hidden_size)
        if args.patch_loss_weight
        else None
    )
    modules = [model] + ([head] if head is not None else [])
    optimizer = train._optimizer(modules, args.lr, 0.05)
    encoder = batches.SequenceEncoder(processor, GRID * GRID)
    rng = np.random.default_rng(args.seed)
    probe = lookup_set(args.probe_questions, args.seed + 99, args.pictures_kind)
    probe_batch = batches.collate(
        draw(np.random.default_rng(args.seed + 98), 64, args.pictures_kind), encoder, 3
    )
    history, start, step, next_probe = [], time.monotonic(), 0, 0.0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= next_probe or elapsed >= args.minutes * 60:
            model.eval()
            generator = evaluate.HFGenerator(model, processor, max_new_tokens=4)
            report = evaluate.score(probe, generator, batch_size=64)
            model.train()
            row = {"step": step, "seconds": round(elapsed), **report.accuracy}
            if head is not None:
                with torch.no_grad():
                    features = train.image_features(model, probe_batch["pixels"])
                    tokens = patch_head.patch_accuracy(head, features, probe_batch["patch_labels"])
                row["patch_accuracy"] = tokens
            history.append(row)
            print(json.dumps(row), flush=True)
            next_probe = elapsed + args.probe_every_s
            if elapsed >= args.minutes * 60:
                break
        batch = batches.collate(draw(rng, args.pictures, args.pictures_kind), encoder, 3)
        for group in optimizer.param_groups:
            group["lr"] = train.lr_at(step, 10**9, args.lr, 100)  # warm-up, then constant
        loss, answer, patch, _ = train.training_loss(model, head, batch, 3, args.patch_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in modules for p in m.parameters()], 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} answer loss {answer.item():.4f} patch loss {patch.item():.4f}")
    return {
        "patch_loss_weight": args.patch_loss_weight,
        "pictures_kind": args.pictures_kind,
        "position_init": args.position_init,
        "steps": step,
        "history": history,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the experiment from the command line; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch-loss-weight", type=float, default=0.5)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pictures", type=int, default=16, help="pictures per step (3 questions each)")
    p.add_argument("--pictures-kind", default="first_demo", choices=["first_demo", "easy"])
    p.add_argument("--position-init", default="sincos", choices=["sincos", "clip"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-questions", type=int, default=150)
    p.add_argument("--probe-every-s", type=float, default=60.0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    result = run(args)
    print("result " + json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
