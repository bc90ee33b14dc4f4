"""``POST /tokenize`` and ``POST /detokenize`` (vLLM's): the tokens a prompt or a conversation
becomes (images expanded to their placeholder tokens), and the text of token ids."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from mmcore.server.errors import APIError
from mmcore.server.media_fetch import resolve_messages
from mmcore.server.protocol import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from mmcore.server.serving_common import ServerState


def _parse(model: type, body: Any):
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_value")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise APIError(400, f"invalid request: {problems}", "invalid_value") from None


def _tokenize_chat(state: ServerState, req: TokenizeChatRequest) -> list[int]:
    engine = state.engine.engine
    resolved = resolve_messages(req.message_dicts(), state.media)
    prompt = engine.chat_prompt(
        resolved,
        req.chat_template,
        tools=req.tool_dicts(),
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template_kwargs=req.chat_template_kwargs,
    )
    if req.add_special_tokens is not None and "prompt" in prompt:
        ids = state.tokenizer(prompt["prompt"], add_special_tokens=req.add_special_tokens)
        prompt = {
            "prompt_token_ids": ids["input_ids"],
            "multi_modal_data": prompt["multi_modal_data"],
        }
    return [int(t) for t in engine.inputs.process(prompt).token_ids]


async def tokenize(state: ServerState, body: Any) -> JSONResponse:
    """Tokenize a ``prompt`` or chat ``messages``; images count as the tokens they expand to."""
    is_chat = isinstance(body, dict) and "messages" in body
    req = _parse(TokenizeChatRequest if is_chat else TokenizeCompletionRequest, body)
    state.check_model(req.model)

    def run() -> list[int]:
        if is_chat:
            return _tokenize_chat(state, req)
        return list(
            state.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"]
        )

    try:
        tokens = await state.engine.run_in_pool(run)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_request") from exc
    result: dict[str, Any] = {
        "count": len(tokens),
        "max_model_len": state.engine.engine.max_model_len,
        "tokens": tokens,
    }
    if req.return_token_strs:
        result["token_strs"] = state.tokenizer.convert_ids_to_tokens(tokens)
    return JSONResponse(result)


async def detokenize(state: ServerState, body: Any) -> JSONResponse:
    """The text of ``tokens`` (special tokens included)."""
    req = _parse(DetokenizeRequest, body)
    state.check_model(req.model)
    vocab = len(state.tokenizer)
    bad = [t for t in req.tokens if t >= vocab]
    if bad:
        raise APIError(
            400, f"tokens outside the vocabulary [0, {vocab}): {bad[:5]}", "invalid_value"
        )
    return JSONResponse({"prompt": state.tokenizer.decode(req.tokens)})
