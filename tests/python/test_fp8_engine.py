"""FP8 weights end to end on CPU (torch's CPU ``_scaled_mm``), tiny seeded LLaVA.

- ``quantization="fp8"`` (online) against the float32 engine: greedy tokens and KL of the
  next-token distributions over every prompt position;
- FP8 checkpoints written here in the hub's layouts load: compressed-tensors per-channel equals
  the online engine token for token (same scales); per-tensor + static input scales and
  transformers' block-wise ``fp8`` agree with float32 (block-wise equals the online engine run
  on the block round-tripped weights);
- tensor parallel (2 CPU ranks, gloo) with FP8 equals one rank;
- quantisation methods mmcore does not run are refused by name.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing import fp8_checkpoints as fp8ckpt
from mmcore.testing.tiny_checkpoints import build_tiny_llava

CPU = "cpu"  # the CPU path (torch's CPU _scaled_mm); test_fp8_cuda.py covers the GPU
MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
ALL_PROMPT_LOGPROBS = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=-1)
# Thresholds (float32 engine vs FP8 weights, tiny LLaVA with a x20 LM head; online FP8
# measured 0.97 / 0.004 nats / 0.79):
MIN_NEXT_TOKEN_AGREEMENT = 0.9  # greedy next token equal, every prompt position (~420)
MAX_MEAN_KL = 0.02  # KL(float32 || fp8) in nats, mean over the same positions
MIN_FREE_RUNNING = 0.6  # share of generated tokens before the first divergence (a random
# model's near-ties compound once one token differs, so this is looser)
BLOCK = (16, 32)  # block-wise FP8: several blocks per projection, rows != cols


def _prompts(photos):
    a, c, k, r, cam = (photos[n] for n in ("astronaut", "chelsea", "coffee", "rocket", "camera"))
    story = "The rocket lifts off into a clear blue sky, leaving a trail of smoke. " * 3
    return [
        ("USER: hello there, how are you?\nASSISTANT:", []),
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [k, c]),
        (f"USER: {story}\nWhat happened?\nASSISTANT:", []),
        ("USER: <image>\nWhat colour?\nASSISTANT:", [r]),
        ("USER: <image>\nDescribe the picture in detail.\nASSISTANT:", [cam]),
        ("USER: Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation, please.\nASSISTANT:", []),
        ("USER: The cat sleeps on a warm blanket while the coffee cools.\nASSISTANT:", []),
    ]


def _requests(prompts):
    return [{"prompt": p, "multi_modal_data": {"image": i}} if i else p for p, i in prompts]


def _greedy(engine, requests):
    return [o.outputs[0].token_ids for o in engine.generate(requests, GREEDY, use_tqdm=False)]


def _position_logprobs(engine, requests) -> torch.Tensor:
    """Log-probabilities of every vocab token at every prompt position ``[positions, vocab]``."""
    rows = []
    for out in engine.generate(requests, ALL_PROMPT_LOGPROBS, use_tqdm=False):
        for position in out.prompt_logprobs[1:]:
            row = torch.full((len(position),), -math.inf, dtype=torch.float64)
            for token, lp in position.items():
                row[token] = lp.logprob
            rows.append(row)
    return torch.stack(rows)


def _mean_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> float:
    """Mean over positions of KL(p || q) in nats."""
    return float((p_logprobs.exp() * (p_logprobs - q_logprobs)).sum(-1).mean())


def _assert_close_to_float32(case, tokens, logprobs) -> None:
    base = case["base_logprobs"]
    assert base.shape == logprobs.shape and base.shape[0] >= 300
    next_token = float((base.argmax(-1) == logprobs.argmax(-1)).double().mean())
    kl = _mean_kl(base, logprobs)
    free_running = _agreement(case["base_tokens"], tokens)
    assert next_token >= MIN_NEXT_TOKEN_AGREEMENT, next_token
    assert 0 < kl <= MAX_MEAN_KL, kl  # > 0: the FP8 path really ran
    assert free_running >= MIN_FREE_RUNNING, free_running


def _agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Share of the reference's greedy tokens that ``other`` reproduces before diverging."""
    kept = 0
    for ref, got in zip(reference, other):
        for a, b in zip(ref, got):
            if a != b:
                break
            kept += 1
    return kept / sum(len(ref) for ref in reference)


@pytest.fixture(scope="module")
def fp8_case(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("fp8")
    model_dir = build_tiny_llava(root / "bf16", seed=0)
    requests = _requests(_prompts(photos))
    base = Engine(model_dir, device=CPU)
    online = Engine(model_dir, quantization="fp8", device=CPU)
    case = dict(
        root=root,
        model_dir=model_dir,
        requests=requests,
        base_tokens=_greedy(base, requests),
        base_logprobs=_position_logprobs(base, requests),
        online_tokens=_greedy(online, requests),
        online_logprobs=_position_logprobs(online, requests),
    )
    base.shutdown()
    online.shutdown()
    return case


def test_online_fp8_quantises_the_language_model_only(fp8_case):
    engine = Engine(fp8_case["model_dir"], quantization="fp8", device=CPU)
    fp8 = {n for n, p in engine.config.model.named_parameters() if p.dtype == torch.float8_e4m3fn}
    expected = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert {n.split(".")[-2] for n in fp8} == expected
    assert all(n.startswith("language_model.model.layers.") for n in fp8)
    assert len(fp8) == 4 * 2  # every projection of both layers; LM head and embeddings stay
    assert engine.config.quantization == "fp8 (quantised on load)"
    engine.shutdown()


def test_online_fp8_agrees_with_float32(fp8_case):
    _assert_close_to_float32(fp8_case, fp8_case["online_tokens"], fp8_case["online_logprobs"])


def test_quantize_vision_also_quantises_the_encoder(fp8_case):
    engine = Engine(fp8_case["model_dir"], quantization="fp8", quantize_vision=True, device=CPU)
    model = engine.config.model
    fp8 = {n for n, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert "vision_tower.encoder.layers.0.self_attn.q_proj.weight" in fp8
    assert "multi_modal_projector.linear_2.weight" in fp8
    requests = fp8_case["requests"]
    tokens, logprobs = _greedy(engine, requests), _position_logprobs(engine, requests)
    _assert_close_to_float32(fp8_case, tokens, logprobs)
    engine.shutdown()


def test_compressed_tensors_channel_checkpoint_equals_online(fp8_case):
    ckpt = fp8ckpt.write_compressed_tensors_fp8(
        fp8_case["model_dir"], str(fp8_case["root"] / "ct_channel")
    )
    with open(os.path.join(ckpt, "config.json")) as f:
        assert json.load(f)["quantization_config"]["quant_method"] == "compressed-tensors"
    engine = Engine(ckpt, device=CPU)  # FP8 from the checkpoint's config, no option needed
    assert engine.config.quantization == "fp8 (compressed-tensors checkpoint)"
    weight = engine.config.model.language_model.model.layers[0].self_attn.qkv_proj.weight
    assert weight.dtype == torch.float8_e4m3fn
    assert _greedy(engine, fp8_case["requests"]) == fp8_case["online_tokens"]
    logprobs = _position_logprobs(engine, fp8_case["requests"])
    torch.testing.assert_close(logprobs, fp8_case["online_logprobs"], atol=1e-4, rtol=0)
    engine.shutdown()


# transformers >= 4.52 saves LLaVA under these prefixes (the tiny builder writes the older ones).
_TRANSFORMERS5_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def _renamed_to_transformers5_layout(src: str, dst: str) -> str:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    renamed = {}
    for name, tensor in tensors.items():
        for old, new in _TRANSFORMERS5_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    save_file(renamed, os.path.join(dst, "model.safetensors"))
    return dst


def test_compressed_tensors_checkpoint_in_the_transformers5_key_layout(fp8_case):
    ckpt = fp8ckpt.write_compressed_tensors_fp8(fp8_case["model_dir"], str(fp8_case["root"] / "ct"))
    renamed = _renamed_to_transformers5_layout(ckpt, str(fp8_case["root"] / "ct_t5"))
    engine = Engine(renamed, device=CPU)
    assert engine.config.quantization == "fp8 (compressed-tensors checkpoint)"
    assert _greedy(engine, fp8_case["requests"][:3]) == fp8_case["online_tokens"][:3]
    engine.shutdown()


def test_compressed_tensors_tensor_strategy_with_static_input_scales(fp8_case):
    texts = [p for p in fp8_case["requests"] if isinstance(p, str)]
    amax = fp8ckpt.calibrate_input_amax(fp8_case["model_dir"], texts)
    ckpt = fp8ckpt.write_compressed_tensors_fp8(
        fp8_case["model_dir"], str(fp8_case["root"] / "ct_tensor"), "tensor", input_amax=amax
    )
    engine = Engine(ckpt, quantization="compressed-tensors", device=CPU)
    o_proj = engine.config.model.language_model.model.layers[0].self_attn.o_proj
    assert o_proj.input_scale.dim() == 0 and o_proj.input_scale > 0
    requests = fp8_case["requests"]
    tokens, logprobs = _greedy(engine, requests), _position_logprobs(engine, requests)
    _assert_close_to_float32(fp8_case, tokens, logprobs)
    engine.shutdown()


def test_transformers_blockwise_fp8_checkpoint(fp8_case):
    src, root = fp8_case["model_dir"], fp8_case["root"]
    ckpt = fp8ckpt.write_transformers_fp8_blockwise(src, str(root / "hf_fp8"), BLOCK)
    round_trip = fp8ckpt.write_block_dequantized(src, str(root / "hf_fp8_round_trip"), BLOCK)
    engine = Engine(ckpt, device=CPU)
    reference = Engine(round_trip, quantization="fp8", device=CPU)
    requests = fp8_case["requests"]
    tokens, logprobs = _greedy(engine, requests), _position_logprobs(engine, requests)
    assert tokens == _greedy(reference, requests)
    _assert_close_to_float32(fp8_case, tokens, logprobs)
    engine.shutdown()
    reference.shutdown()


def _greedy_with_logprobs(engine, requests):
    """Greedy tokens and, per prompt, the full next-token log-probabilities of each step."""
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=-1)
    tokens, logprobs = [], []
    for out in engine.generate(requests, params, use_tqdm=False):
        tokens.append(out.outputs[0].token_ids)
        rows = [[lp.logprob for _, lp in sorted(step.items())] for step in out.outputs[0].logprobs]
        logprobs.append(torch.tensor(rows, dtype=torch.float64))
    return tokens, logprobs


def test_tensor_parallel_fp8_matches_one_rank(fp8_case):
    """Two ranks: a block-wise FP8 checkpoint's scales sharded, encoder and projector quantised
    online per shard (row-parallel weight scales are the row's maximum over the ranks), so the
    weights equal one rank's. Row-parallel layers quantise each rank's input slice with its own
    per-token scale (as vLLM does; one scale over the ranks would cost an all-reduce per layer),
    so the outputs differ from one rank's by activation rounding only: compared at every
    generated position whose context both runs share."""
    ckpt = fp8ckpt.write_transformers_fp8_blockwise(
        fp8_case["model_dir"], str(fp8_case["root"] / "hf_fp8_tp"), BLOCK
    )
    runs = []
    for size in (1, 2):
        engine = Engine(ckpt, tensor_parallel_size=size, quantize_vision=True, device=CPU)
        try:
            runs.append(_greedy_with_logprobs(engine, fp8_case["requests"]))
        finally:
            engine.shutdown()
    (one_tokens, one_logprobs), (two_tokens, two_logprobs) = runs
    shared_one, shared_two = [], []
    for a, b, lp_a, lp_b in zip(one_tokens, two_tokens, one_logprobs, two_logprobs):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a) - 1)
        shared_one.append(lp_a[: same + 1])  # the first differing step still shares its context
        shared_two.append(lp_b[: same + 1])
    one_lp, two_lp = torch.cat(shared_one), torch.cat(shared_two)
    kl = _mean_kl(one_lp, two_lp)
    free_running = _agreement(one_tokens, two_tokens)
    assert one_lp.shape[0] >= 48
    assert kl <= MAX_MEAN_KL / 4, kl  # measured 0.0014 over 85 positions
    assert free_running >= 0.7, free_running  # measured 0.86


def _with_quantization_config(src: str, dst: str, quantization_config: dict) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


UNSUPPORTED = {
    "awq": ({"quant_method": "awq", "bits": 4, "group_size": 128}, "'awq'"),
    "gptq": ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "'gptq'"),
    "bitsandbytes": ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
    "ct_int4": (
        {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}},
        },
        "'pack-quantized'",
    ),
}


@pytest.mark.parametrize("method", list(UNSUPPORTED))
def test_unsupported_quantisation_methods_are_refused_by_name(fp8_case, method):
    quantization_config, named = UNSUPPORTED[method]
    model_dir = _with_quantization_config(
        fp8_case["model_dir"], str(fp8_case["root"] / method), quantization_config
    )
    with pytest.raises(ValueError, match=named):
        Engine(model_dir, device=CPU)
