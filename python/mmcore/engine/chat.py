"""HF/OpenAI chat messages -> a prompt with one placeholder per item, plus its media."""

from __future__ import annotations

import contextlib
import json
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
    "video": "video",
    "video_url": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
}
_URL_PARTS = ("image_url", "video_url", "audio_url")
# OpenAI's input_audio formats; the decoder reads the container from the bytes themselves.
_INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "m4a", "webm")


def _input_audio(part: dict) -> bytes:
    """The bytes of an OpenAI ``{"type": "input_audio", "input_audio": {data, format}}``."""
    import base64
    import binascii

    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise ValueError("an input_audio content part needs input_audio.data (base64)")
    fmt = audio.get("format", "wav")
    if fmt not in _INPUT_AUDIO_FORMATS:
        raise ValueError(
            f"input_audio.format must be one of {list(_INPUT_AUDIO_FORMATS)}, got {fmt!r}"
        )
    try:
        return base64.b64decode(audio["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("input_audio.data is not valid base64") from None


def _part_media(part: dict) -> Any:
    kind = part["type"]
    if kind in _URL_PARTS:
        url = part.get(kind)
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise ValueError(f"a {kind} content part needs {kind}.url")
        return url
    if kind == "image_embeds":
        if part.get("image_embeds") is None:
            raise ValueError("an image_embeds content part needs 'image_embeds'")
        return {"image_embeds": part["image_embeds"]}
    if kind == "input_audio":
        return _input_audio(part)
    for key in (kind, "image_pil", "url", "path"):
        if key in part:
            return part[key]
    raise ValueError(f"a {kind!r} content part carries no {_MEDIA_PART_TYPES[kind]}")


_MESSAGE_EXTRAS = ("name", "tool_calls", "tool_call_id")
# apply_chat_template's own arguments: chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_KWARGS = {
    "conversation",
    "messages",
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
}


def _template_tool_calls(tool_calls: list[dict]) -> list[dict]:
    """Arguments given as JSON text (OpenAI's form) become dicts, as HF templates expect."""
    converted = []
    for call in tool_calls:
        function = dict(call.get("function", {}))
        if isinstance(function.get("arguments"), str):
            # Text that is not JSON stays text: templates that print it still work.
            with contextlib.suppress(json.JSONDecodeError):
                function["arguments"] = json.loads(function["arguments"])
        converted.append({**call, "function": function})
    return converted


def split_messages(messages: list[dict]) -> tuple[list[dict], dict[str, list]]:
    """Normalise content parts for a chat template and collect the media in order.

    Returns:
        The messages with every media part replaced by ``{"type": <modality>}`` (what HF chat
        templates expect: ``image``, ``video``, ``audio``) and ``{modality: [...]}`` with the
        media in order of appearance.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    media: dict[str, list] = {}
    rendered = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError("each message must be a dict with a 'role'")
        content = message.get("content")
        # Tool-calling turns keep what templates read from them (tool_calls, tool_call_id, name).
        extra = {k: message[k] for k in _MESSAGE_EXTRAS if message.get(k) is not None}
        if content is None or isinstance(content, str):
            rendered.append({"role": message["role"], "content": content or "", **extra})
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
        rendered.append({"role": message["role"], "content": parts, **extra})
    return rendered, media


def render_chat(
    tokenizer,
    messages: list[dict],
    chat_template: str | None,
    placeholder_text: dict[str, str],
    *,
    tools: list[dict] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict | None = None,
) -> tuple[str, list[int] | None, dict[str, list]]:
    """Render messages with the chat template (see ``engine/chat_safety.py`` for the rules).

    Text typed by the user that looks like a placeholder is rejected: only media parts may
    create media slots.

    Args:
        tokenizer: the HF tokenizer whose ``apply_chat_template`` renders.
        messages: HF/OpenAI messages (content parts, ``tool_calls``, ``tool_call_id``).
        chat_template: a template overriding the tokenizer's.
        placeholder_text: modality -> the placeholder text users may not type.
        tools: OpenAI tool definitions the template shows the model.
        add_generation_prompt: end with the assistant turn's opening.
        continue_final_message: leave the last (assistant) message open to be continued.
        chat_template_kwargs: extra template variables (e.g. ``enable_thinking``).

    Returns:
        ``(prompt text, token ids or None, media by modality)``: token ids are given when user
        text could form a control token and was tokenized apart from the template's text; None
        means the prompt text tokenizes as usual.

    Raises:
        ValueError: malformed messages, or text that forms a media placeholder.
    """
    reserved = _RESERVED_TEMPLATE_KWARGS & set(chat_template_kwargs or {})
    if reserved:
        raise ValueError(f"chat_template_kwargs may not set {sorted(reserved)}")
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
    rendered, media = split_messages(messages)
    for message in rendered:
        if "tool_calls" in message:
            message["tool_calls"] = _template_tool_calls(message["tool_calls"])
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
    if continue_final_message and (not rendered or rendered[-1]["role"] != "assistant"):
        raise ValueError("continue_final_message needs an assistant message last")
    options = dict(chat_template_kwargs or {})
    if tools:
        options["tools"] = tools
    if continue_final_message:
        options["continue_final_message"] = True

    def render(msgs: list[dict]) -> str:
        return tokenizer.apply_chat_template(
            msgs,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **options,
        )

    prompt = render(rendered)
    check_placeholder_count(prompt, placeholder_text, media)
    if not could_form_special(texts, special_token_strings(tokenizer)):
        return prompt, None, media
    marked, marked_texts = with_markers(rendered)
    return prompt, tokenize_marked(tokenizer, render(marked), marked_texts), media
