"""The model-free part of an Engine: tokenizer, processor and input processing.

A server whose engine runs in another process (the "engine core") keeps only this part: it
tokenizes, renders chat templates and processes media in the server process, and sends the
finished :class:`~mmcore.engine.inputs.ProcessedPrompt` to the core. ``Engine`` builds the same
parts with the same functions (:func:`build_input_processor`, :func:`chat_prompt`), so both
paths process a prompt identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig

from mmcore.engine.chat import render_chat
from mmcore.engine.config import _load_tokenizer
from mmcore.engine.inputs import InputProcessor
from mmcore.engine_args import EngineArgs
from mmcore.models.transformers_backend.loader import processor_class
from mmcore.multimodal.processor_cache import ProcessorCache
from mmcore.structured_outputs import GrammarCompiler, StructuredOutputManager


@dataclass
class FrontConfig:
    """What the core engine resolved that input processing and the server need.

    Attributes:
        args: the engine's options.
        model_path: the checkpoint folder the core loaded.
        max_model_len: longest prompt + output.
        max_num_seqs: most requests per step.
        num_blocks: KV cache blocks of the core.
        vocab_size: rows of the model's logits.
        chat_template: the template in use (option or checkpoint's).
        sampling_defaults: the checkpoint's generation_config defaults.
        eos_token_ids: tokens that end a completion.
        served_model_names: the names the model is served under.
    """

    args: EngineArgs
    model_path: str
    max_model_len: int
    max_num_seqs: int
    num_blocks: int
    vocab_size: int
    chat_template: str | None
    sampling_defaults: dict[str, Any]
    eos_token_ids: list[int]
    served_model_names: list[str]

    @classmethod
    def of(cls, config: Any) -> FrontConfig:
        """The fields of an engine's ``EngineConfig`` (picklable: no model, no tokenizer)."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


def build_input_processor(
    config: Any, processor: Any, tokenizer: Any, cache: ProcessorCache
) -> InputProcessor:
    """The input processor of an engine config (an ``EngineConfig`` or a :class:`FrontConfig`).

    Args:
        config: the resolved config.
        processor: the model's multimodal processor.
        tokenizer: the model's tokenizer.
        cache: the processor output cache.

    Returns:
        The InputProcessor.
    """
    args = config.args
    return InputProcessor(
        processor,
        tokenizer,
        model_id=config.model_path,
        max_model_len=config.max_model_len,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        mm_processor_kwargs=args.mm_processor_kwargs,
        cache=cache,
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=list(args.allowed_media_domains or []),
    )


def chat_prompt(
    processor: Any,
    tokenizer: Any,
    default_template: str | None,
    messages: list[dict],
    chat_template: str | None = None,
    **render_options: Any,
) -> dict:
    """Render one conversation into a ``{"prompt" or "prompt_token_ids", "multi_modal_data"}``
    prompt (see ``Engine.chat_prompt``).

    Args:
        processor: the model's multimodal processor (its placeholder texts).
        tokenizer: the model's tokenizer.
        default_template: the engine's template, used when ``chat_template`` is None.
        messages: one conversation.
        chat_template: a Jinja template overriding the default.
        render_options: options of ``mmcore.engine.chat.render_chat``.

    Returns:
        The prompt dict ``Engine.generate`` and ``InputProcessor.process`` take.
    """
    placeholders = {m: processor.placeholder_text(m) for m in processor.supported_modalities}
    prompt, token_ids, media = render_chat(
        tokenizer, messages, chat_template or default_template, placeholders, **render_options
    )
    if token_ids is not None:  # user text kept apart from control tokens
        return {"prompt_token_ids": token_ids, "multi_modal_data": media}
    return {"prompt": prompt, "multi_modal_data": media}


class EngineFront:
    """The attributes of an ``Engine`` that a server reads, without the model.

    Args:
        config: what the core engine resolved (:meth:`FrontConfig.of` of its config).

    Attributes:
        config, tokenizer, processor, inputs, structured_outputs, vocab_size: as ``Engine``'s.
    """

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.tokenizer = _load_tokenizer(config.args, config.model_path)
        hf_config = AutoConfig.from_pretrained(config.model_path)
        make_processor = processor_class(
            hf_config.model_type, config.args.model_impl, config.model_path
        )
        self.processor = make_processor(
            config.model_path, hf_config, self.tokenizer, config.args.mm_processor_kwargs
        )
        cache = ProcessorCache(int(config.args.mm_processor_cache_gb * (1 << 30)))
        self.inputs = build_input_processor(config, self.processor, self.tokenizer, cache)
        self.vocab_size = config.vocab_size
        # Compiled here only to refuse a bad grammar with a 400 before the request is sent.
        self.structured_outputs = StructuredOutputManager(
            lambda: GrammarCompiler(self.tokenizer, config.vocab_size, config.eos_token_ids)
        )

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer (as ``Engine.get_tokenizer``)."""
        return self.tokenizer

    def chat_prompt(
        self, messages: list[dict], chat_template: str | None = None, **render_options: Any
    ) -> dict:
        """As ``Engine.chat_prompt``."""
        return chat_prompt(
            self.processor,
            self.tokenizer,
            self.config.chat_template,
            messages,
            chat_template,
            **render_options,
        )
