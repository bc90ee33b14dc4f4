"""One request's structured output constraint, from whichever field asked for it.

OpenAI's ``response_format``, vLLM's ``structured_outputs`` and ``guided_*`` fields, and a
``tool_choice`` that forces a call (``required`` or a named function) all become one
``StructuredOutputsParams`` the engine enforces with xgrammar. Two constraints in one request are
refused: the engine can follow only one grammar.
"""

from __future__ import annotations

import json
from typing import Any

from mmcore.sampling_params import StructuredOutputsParams


def _schema(value: dict[str, Any] | str, field: str) -> dict[str, Any] | str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{field} must be a JSON schema object")
    return value


def _from_response_format(response_format) -> StructuredOutputsParams | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise ValueError("response_format of type json_schema needs json_schema.schema")
    return StructuredOutputsParams(json=spec.schema_)


def _from_structured_field(field) -> StructuredOutputsParams | None:
    if field is None:
        return None
    given = {
        name: value
        for name, value in (
            ("json", field.json_),
            ("regex", field.regex),
            ("choice", field.choice),
            ("grammar", field.grammar),
            ("json_object", field.json_object or None),
            ("structural_tag", field.structural_tag),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ValueError(
            "structured_outputs needs exactly one of json, regex, choice, grammar, json_object, "
            f"structural_tag; got {sorted(given) or 'none'}"
        )
    if "json" in given:
        given["json"] = _schema(given["json"], "structured_outputs.json")
    options = field.model_dump(
        include={
            "disable_fallback",
            "disable_any_whitespace",
            "disable_additional_properties",
            "whitespace_pattern",
        }
    )
    return StructuredOutputsParams(**given, **options)


def required_tool_call_schema(tools: list[Any], parallel: bool) -> dict[str, Any]:
    """The JSON schema of a forced tool call: a list of ``{"name", "parameters"}`` objects, one
    alternative per tool (its name pinned, its parameters schema), at least one call."""
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "parameters": tool_parameters_schema(t),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives},
    }
    if not parallel:
        schema["maxItems"] = 1
    return schema


def tool_parameters_schema(tool: Any) -> dict[str, Any]:
    """A tool's parameters schema (any JSON object when the tool declares none)."""
    return tool.function.parameters or {"type": "object"}


def _from_tool_choice(request: Any) -> StructuredOutputsParams | None:
    choice = getattr(request, "effective_tool_choice", None)
    if choice == "required":
        return StructuredOutputsParams(
            json=required_tool_call_schema(request.tools, request.parallel_tool_calls)
        )
    if choice == "named":
        name = request.tool_choice.function.name
        tool = next(t for t in request.tools if t.function.name == name)
        return StructuredOutputsParams(json=tool_parameters_schema(tool))
    return None


def structured_outputs_of(request: Any) -> StructuredOutputsParams | None:
    """The one structured output constraint a chat or completions request asks for.

    Args:
        request: a ``ChatCompletionRequest`` or ``CompletionRequest``.

    Returns:
        The engine's ``StructuredOutputsParams``, or None for free text.

    Raises:
        ValueError: two constraints at once, or a malformed one.
    """
    found: dict[str, StructuredOutputsParams] = {}
    for name, params in (
        ("response_format", _from_response_format(request.response_format)),
        ("structured_outputs", _from_structured_field(request.structured_outputs)),
        (
            "guided_json",
            StructuredOutputsParams(json=_schema(request.guided_json, "guided_json"))
            if request.guided_json is not None
            else None,
        ),
        (
            "guided_regex",
            StructuredOutputsParams(regex=request.guided_regex)
            if request.guided_regex is not None
            else None,
        ),
        (
            "guided_choice",
            StructuredOutputsParams(choice=request.guided_choice)
            if request.guided_choice is not None
            else None,
        ),
        (
            "guided_grammar",
            StructuredOutputsParams(grammar=request.guided_grammar)
            if request.guided_grammar is not None
            else None,
        ),
        ("tool_choice", _from_tool_choice(request)),
    ):
        if params is not None:
            found[name] = params
    if len(found) > 1:
        raise ValueError(f"only one structured output constraint per request, got {sorted(found)}")
    return next(iter(found.values()), None)
