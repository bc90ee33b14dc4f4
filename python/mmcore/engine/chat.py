"""HF/OpenAI chat messages -> a prompt with one placeholder per item, plus its media."""

from __future__ import annotations

from typing import Any

from mmcore.engine.chat_safety import (
    check_placeholder_count,
    could_form_special,
    message_texts,
    special_token_strings,
    tokenize_marked,
    with_markers,
)

_MEDIA_PART_TYPES = {
    "image": "image",
    "image_url": "image",
    "image_pil": "image",
    "image_embeds": "image",
}


def _part_media(part: dict) -> Any:
    kind = part["type"]
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise ValueError("an image_url content part needs image_url.url")
        return url
    if kind == "image_embeds":
        if part.get("image_embeds") is None:
            raise ValueError("an image_embeds content part needs 'image_embeds'")
        return {"image_embeds": part["image_embeds"]}
    for key in ("image", "image_pil", "url", "path"):
        if key in part:
            return part[key]
    raise ValueError(f"a {kind!r} content part carries no image")


def split_messages(messages: list[dict]) -> tuple[list[dict], dict[str, list]]:
    """Normalise content parts for a chat template and collect the media in order.

    Returns:
        The messages with every media part replaced by ``{"type": "image"}`` (what HF chat
        templates expect) and ``{"image": [...]}`` with the media in order of appearance.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    media: dict[str, list] = {}
    rendered = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError("each message must be a dict with a 'role'")
        content = message.get("content")
        if content is None or isinstance(content, str):
            rendered.append({"role": message["role"], "content": content or ""})
            continue
        if not isinstance(content, list):
            raise ValueError("message content must be a string or a list of content parts")
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError("each content part must be a dict with a string 'type'")
            kind = part["type"]
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError("a text content part needs a string 'text'")
                parts.append({"type": "text", "text": text})
            elif kind in _MEDIA_PART_TYPES:
                modality = _MEDIA_PART_TYPES[kind]
                media.setdefault(modality, []).append(_part_media(part))
                parts.append({"type": modality})
            else:
                raise ValueError(f"unsupported content part type {kind!r}")
        rendered.append({"role": message["role"], "content": parts})
    return rendered, media


def render_chat(
    tokenizer,
    messages: list[dict],
    chat_template: str | None,
    placeholder_text: dict[str, str],
) -> tuple[str, list[int] | None, dict[str, list]]:
    """Render messages with the chat template (see ``engine/chat_safety.py`` for the rules).

    Returns:
        ``(prompt text, token ids or None, media by modality)``: token ids are given when user
        text could form a control token and was tokenized apart from the template's text; None
        means the prompt text tokenizes as usual.

    Raises:
        ValueError: malformed messages, or text that forms a media placeholder.
    """
    rendered, media = split_messages(messages)
    texts = message_texts(rendered)
    for parts in texts:
        for text in parts:
            for modality, placeholder in placeholder_text.items():
                if placeholder and placeholder in text:
                    raise ValueError(
                        f"message text contains the {modality} placeholder {placeholder!r}; "
                        f"send {modality}s as content parts"
                    )
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the model has no chat template; pass chat_template=")

    def render(msgs: list[dict]) -> str:
        return tokenizer.apply_chat_template(
            msgs, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )

    prompt = render(rendered)
    check_placeholder_count(prompt, placeholder_text, media)
    if not could_form_special(texts, special_token_strings(tokenizer)):
        return prompt, None, media
    marked, marked_texts = with_markers(rendered)
    return prompt, tokenize_marked(tokenizer, render(marked), marked_texts), media
