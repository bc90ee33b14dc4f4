"""Chat rendering options vLLM users pass: tools, chat_template_kwargs, add_generation_prompt,
continue_final_message, and earlier tool-calling turns."""

from __future__ import annotations

import pytest

from mmcore.engine.chat import render_chat
from mmcore.testing.tiny_checkpoints import build_tokenizer

TEMPLATE = (
    "{% if system_hint %}[{{ system_hint }}]{% endif %}"
    "{% for m in messages %}<{{ m.role }}>"
    "{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}call:{{ c.function.name }}"
    "({{ c.function.arguments.city }}){% endfor %}{% endif %}"
    "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}"
    "{% if not (loop.last and continue_final_message) %}</{{ m.role }}>{% endif %}"
    "{% endfor %}"
    "{% if tools %}tools:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
PLACEHOLDERS = {"image": "<image>"}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_tools_kwargs_and_generation_prompt(tok):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    prompt, _, media = render_chat(
        tok,
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": "x"}, {"type": "text", "text": "hi"}],
            }
        ],
        TEMPLATE,
        PLACEHOLDERS,
        tools=tools,
        chat_template_kwargs={"system_hint": "be brief"},
    )
    assert prompt == "[be brief]<user><image>hi</user>tools:get_weather;<assistant>"
    assert media == {"image": ["x"]}
    bare, _, _ = render_chat(
        tok,
        [{"role": "user", "content": "hi"}],
        TEMPLATE,
        PLACEHOLDERS,
        add_generation_prompt=False,
    )
    assert bare == "<user>hi</user>"


def test_continue_final_message_leaves_the_last_turn_open(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The cat"}]
    prompt, _, _ = render_chat(
        tok,
        messages,
        TEMPLATE,
        PLACEHOLDERS,
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert prompt.endswith("<assistant>The cat")
    with pytest.raises(ValueError, match="cannot both be true"):
        render_chat(tok, messages, TEMPLATE, PLACEHOLDERS, continue_final_message=True)
    with pytest.raises(ValueError, match="needs an assistant message last"):
        render_chat(
            tok,
            messages[:1],
            TEMPLATE,
            PLACEHOLDERS,
            add_generation_prompt=False,
            continue_final_message=True,
        )


def test_tool_turns_reach_the_template_with_arguments_as_objects(tok):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
    ]
    prompt, _, _ = render_chat(tok, messages, TEMPLATE, PLACEHOLDERS, add_generation_prompt=False)
    assert prompt == (
        "<user>weather?</user><assistant>call:get_weather(Oslo)</assistant><tool>cold#c1</tool>"
    )
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'


@pytest.mark.parametrize("key", ["tokenize", "tools", "add_generation_prompt", "chat_template"])
def test_template_kwargs_cannot_override_rendering_arguments(tok, key):
    with pytest.raises(ValueError, match=f"chat_template_kwargs may not set \\['{key}'\\]"):
        render_chat(
            tok,
            [{"role": "user", "content": "hi"}],
            TEMPLATE,
            PLACEHOLDERS,
            chat_template_kwargs={key: True},
        )
