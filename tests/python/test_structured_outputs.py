"""Structured outputs on a tiny random LLaVA sampled with temperature: every generation under a
JSON schema parses and validates (jsonschema), through generate() and through the streaming
add_request/step path with overlapped scheduling, chunked prefill, preemption and n=2; regex,
choice and EBNF grammar constraints hold; invalid constraints are refused."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from mmcore import Engine, SamplingParams, StructuredOutputsParams
from mmcore.engine.runner import kv_bytes_per_block

SCHEMAS = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 6},
                    "id": {"type": "integer", "minimum": 0, "maximum": 999},
                },
                "required": ["name", "id"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "L", "XL"]},
            "ok": {"enum": [True, False, None]},
        },
        "required": ["color", "size", "ok"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 4},
                "minItems": 1,
                "maxItems": 3,
            },
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 9},
                "maxItems": 4,
            },
        },
        "required": ["tags", "scores"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "x": {"type": "number", "minimum": -10, "maximum": 10},
            "y": {"type": "integer", "minimum": 0, "maximum": 100},
            "ratio": {"type": "number"},
        },
        "required": ["x", "y", "ratio"],
    },
    "list_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "k": {"enum": ["a", "b"]},
                "v": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["k", "v"],
        },
        "minItems": 1,
        "maxItems": 2,
    },
}
PER_SCHEMA = 10  # 5 schemas x 10 = 50 generations per path
MAX_TOKENS = 120


def _params(schema: dict, seed: int, n: int = 1) -> SamplingParams:
    # A random model loves whitespace; compact JSON keeps every generation within MAX_TOKENS.
    constraint = StructuredOutputsParams(json=schema, disable_any_whitespace=True)
    return SamplingParams(
        temperature=1.0, seed=seed, n=n, max_tokens=MAX_TOKENS, structured_outputs=constraint
    )


def _assert_valid(text: str, schema: dict, finish_reason: str) -> None:
    assert finish_reason == "stop", (text, finish_reason)
    jsonschema.validate(json.loads(text), schema)


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir)


def test_fifty_json_generations_validate_through_generate(engine):
    names = [name for name in SCHEMAS for _ in range(PER_SCHEMA)]
    prompts = [f"USER: give me {name} number {i}\nASSISTANT:" for i, name in enumerate(names)]
    outputs = engine.generate(
        prompts, [_params(SCHEMAS[n], i) for i, n in enumerate(names)], use_tqdm=False
    )
    for name, output in zip(names, outputs):
        completion = output.outputs[0]
        _assert_valid(completion.text, SCHEMAS[name], completion.finish_reason)
    assert len({o.outputs[0].text for o in outputs}) > len(outputs) // 2  # sampling varies
    assert engine.structured_outputs.compiler.num_compiled <= len(SCHEMAS)  # compiled once each
    assert engine.stats()["kv_blocks_used"] == 0


def test_fifty_json_generations_validate_while_streaming(tiny_llava_dir, photos):
    """add_request + step() with overlapped scheduling, chunked prefill inside a long prompt,
    preemption (a KV cache too small for all) and n=2: the streamed text only grows, and every
    final text validates."""
    block_bytes = kv_bytes_per_block(Engine(tiny_llava_dir).model, 16, torch.float32)
    engine = Engine(
        tiny_llava_dir,
        async_scheduling=True,
        enable_chunked_prefill=True,
        max_num_batched_tokens=64,
        kv_cache_memory_bytes=90 * block_bytes,
        enable_prefix_caching=False,
    )
    names = [name for name in SCHEMAS for _ in range(PER_SCHEMA // 2)]
    long_text = "describe every detail of the picture, colors, shapes and people " * 2
    for i, name in enumerate(names):
        prompt = f"USER: {long_text if i % 5 == 0 else ''}{name} {i}\nASSISTANT:"
        if i % 4 == 1:
            prompt = {
                "prompt": f"<image>\n{prompt}",
                "multi_modal_data": {"image": photos["chelsea"]},
            }
        engine.add_request(f"r{i}", prompt, _params(SCHEMAS[name], i, n=2))
    streamed: dict[tuple[str, int], str] = {}
    final = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            for completion in output.outputs:
                key = (output.request_id, completion.index)
                assert completion.text.startswith(streamed.get(key, ""))
                streamed[key] = completion.text
            if output.finished:
                final[output.request_id] = output
    assert len(final) == len(names)
    for i, name in enumerate(names):
        for completion in final[f"r{i}"].outputs:
            _assert_valid(completion.text, SCHEMAS[name], completion.finish_reason)
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_used"] == 0
    assert engine.structured_outputs.num_rejected_tokens == 0


def test_regex_choice_and_grammar_constraints_hold(engine):
    regex = r"[0-9]{3}-[a-z]{2,5}"
    choices = ["yes", "no", "maybe so", 'a "quoted" one']
    grammar = 'root ::= "answer: " ("left" | "right") " " [0-9] [0-9]?'
    kinds = [
        (StructuredOutputsParams(regex=regex), lambda t: re.fullmatch(regex, t)),
        (StructuredOutputsParams(choice=choices), lambda t: t in choices),
        (
            StructuredOutputsParams(grammar=grammar),
            lambda t: re.fullmatch(r"answer: (left|right) [0-9][0-9]?", t),
        ),
    ]
    prompts = [f"USER: question {i}\nASSISTANT:" for i in range(8)]
    for constraint, holds in kinds:
        # A hot temperature (the tiny model's scaled logits otherwise pick one choice) and a
        # seed per prompt, so the draws do not depend on which tests ran before.
        params = [
            SamplingParams(temperature=4.0, seed=i, max_tokens=40, structured_outputs=constraint)
            for i in range(len(prompts))
        ]
        texts = [o.outputs[0].text for o in engine.generate(prompts, params, use_tqdm=False)]
        assert all(holds(t) for t in texts), texts
        assert len(set(texts)) > 1, texts


def test_json_object_gives_a_json_object(engine):
    params = SamplingParams(
        temperature=0.7,
        max_tokens=MAX_TOKENS,
        structured_outputs=StructuredOutputsParams(json_object=True),
    )
    outputs = engine.generate(
        [f"USER: json {i}\nASSISTANT:" for i in range(6)], params, use_tqdm=False
    )
    finished = [o.outputs[0] for o in outputs if o.outputs[0].finish_reason == "stop"]
    assert finished
    for completion in finished:
        assert isinstance(json.loads(completion.text), dict)
    for o in outputs:
        assert o.outputs[0].text.startswith("{")


@pytest.mark.parametrize(
    "constraint,message",
    [
        (dict(json={"type": "objekt"}), "structured_outputs.json"),
        (dict(regex="[a-"), "structured_outputs.regex"),
        (dict(grammar='root ::= "a" |'), "structured_outputs.grammar"),
    ],
)
def test_invalid_constraints_are_refused(engine, constraint, message):
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**constraint))
    with pytest.raises(ValueError, match=message):
        engine.generate("USER: hi\nASSISTANT:", params, use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "needs one constraint"),
        ({"json": {"type": "object"}, "regex": "a"}, "one kind"),
        ({"json": "{not json"}, "not valid JSON"),
        ({"choice": []}, "choice"),
        ({"json": {"type": "object"}, "whitespace_pattern": r"\s"}, "whitespace_pattern"),
    ],
)
def test_malformed_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StructuredOutputsParams(**kwargs)


def test_vllm_offline_example_runs_unchanged(engine):
    """vLLM's structured-outputs example with vLLM's import paths swapped for mmcore's (and vLLM's
    own option for compact JSON): a pydantic model's schema, keyword arguments of generate(),
    and the earlier ``guided_decoding`` / ``GuidedDecodingParams`` names."""
    from enum import Enum

    from pydantic import BaseModel, Field

    from mmcore.sampling_params import GuidedDecodingParams
    from mmcore.sampling_params import StructuredOutputsParams as FromModule

    class CarType(str, Enum):
        sedan = "sedan"
        suv = "SUV"
        truck = "Truck"

    class CarDescription(BaseModel):
        brand: str = Field(max_length=8)
        doors: int = Field(ge=2, le=5)
        car_type: CarType

    assert FromModule is StructuredOutputsParams
    # disable_any_whitespace (a vLLM option too): the random model would emit whitespace forever.
    structured = StructuredOutputsParams(
        json=CarDescription.model_json_schema(), disable_any_whitespace=True
    )
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=80, structured_outputs=structured)
    outputs = engine.generate(
        prompts=["Generate a JSON with the brand, doors and type of a car"] * 4,
        sampling_params=params,
        use_tqdm=False,
    )
    for output in outputs:
        CarDescription.model_validate_json(output.outputs[0].text)
    legacy = SamplingParams(guided_decoding=GuidedDecodingParams(choice=["Positive", "Negative"]))
    assert legacy.structured_outputs.choice == ["Positive", "Negative"]
    text = engine.generate("Classify: mmcore is wonderful!", legacy, use_tqdm=False)[0]
    assert text.outputs[0].text in ("Positive", "Negative")
