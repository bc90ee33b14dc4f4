"""Chat message normalisation: content parts, media order, placeholder injection."""

import pytest

from mmcore.engine.chat import render_chat, split_messages


class _FakeTemplateTokenizer:
    """Renders like a minimal HF chat template: images as <image>, text as is."""

    chat_template = "x"

    def apply_chat_template(
        self, messages, chat_template=None, tokenize=False, add_generation_prompt=True
    ):
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                out.append(f"{m['role'].upper()}: {content}")
            else:
                parts = ["<image>" if p["type"] == "image" else p["text"] for p in content]
                out.append(f"{m['role'].upper()}: " + " ".join(parts))
        return "\n".join(out) + ("\nASSISTANT:" if add_generation_prompt else "")


def test_media_parts_become_image_slots_in_order():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                {"type": "text", "text": "and"},
                {"type": "image", "image": "PIL-OBJECT"},
            ],
        }
    ]
    rendered, media = split_messages(messages)
    assert media == {"image": ["data:image/png;base64,AAA", "PIL-OBJECT"]}
    assert [p["type"] for p in rendered[0]["content"]] == ["image", "text", "image"]
    prompt, _, _ = render_chat(_FakeTemplateTokenizer(), messages, None, {"image": "<image>"})
    assert prompt == "USER: <image> and <image>\nASSISTANT:"


@pytest.mark.parametrize(
    "messages,message",
    [
        ([], "non-empty"),
        ([{"content": "hi"}], "role"),
        ([{"role": "user", "content": [{"type": "hologram_url"}]}], "unsupported content part"),
        ([{"role": "user", "content": [{"type": "video_url"}]}], "video_url.url"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "image_url.url"),
        ([{"role": "user", "content": [{"type": "text"}]}], "string 'text'"),
        ([{"role": "user", "content": 5}], "string or a list"),
    ],
)
def test_malformed_messages_are_rejected(messages, message):
    with pytest.raises(ValueError, match=message):
        split_messages(messages)


def test_user_typed_placeholder_never_creates_a_slot():
    for content in ("look <image> here", [{"type": "text", "text": "<image>"}]):
        with pytest.raises(ValueError, match="placeholder"):
            render_chat(
                _FakeTemplateTokenizer(),
                [{"role": "user", "content": content}],
                None,
                {"image": "<image>"},
            )
