"""Compiles structured-output constraints into xgrammar grammars, once per distinct constraint.

The tokenizer's vocabulary comes from the Hugging Face tokenizer; the bitmask width is the
model's vocabulary size, which may exceed the tokenizer's (padded embedding rows are never
allowed).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from mmcore.sampling_params import StructuredOutputsParams

_CACHE_ENTRIES = 256
# xgrammar 0.2.9 writes the characters of a string with minLength/maxLength as this class,
# which lets raw control characters (invalid in JSON) through; the unbounded string rule
# excludes them. Until fixed upstream, the converted grammar gets the strict class.
_LOOSE_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHAR = '[^\\0-\\x1f\\"\\\\\\r\\n]'


def _choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose sentences are exactly the choices (JSON string escapes)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _cache_key(params: StructuredOutputsParams) -> tuple:
    kind = params.kind
    value = getattr(params, kind)
    if kind == "json":
        value = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    elif kind == "choice":
        value = tuple(value)
    elif kind == "json_object":
        value = True
    return (kind, value, params.disable_any_whitespace)


class GrammarCompiler:
    """xgrammar's compiler for one tokenizer, with an LRU cache of compiled grammars.

    Args:
        tokenizer: the Hugging Face tokenizer of the model.
        vocab_size: rows of the model's logits.
        stop_token_ids: tokens that end a completion once the grammar is complete (EOS).
        max_threads: compiler threads.
    """

    def __init__(
        self, tokenizer, vocab_size: int, stop_token_ids: list[int], max_threads: int = 8
    ) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None
        )
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=max_threads)
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()  # the server processes inputs in worker threads
        self.num_compiled = 0

    def compile(self, params: StructuredOutputsParams):
        """The compiled grammar of ``params`` (from the cache when seen before).

        Raises:
            ValueError: the schema, regex or grammar is invalid or unsupported.
        """
        key = _cache_key(params)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            compiled = self._compile(params)
        except Exception as err:  # xgrammar raises RuntimeError and its own error types
            message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ValueError(f"invalid structured_outputs.{params.kind}: {message}") from err
        with self._lock:
            self._cache[key] = compiled
            self.num_compiled += 1
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, params: StructuredOutputsParams):
        any_whitespace = not params.disable_any_whitespace
        kind = params.kind
        if kind == "json":
            schema = params.json
            if isinstance(schema, dict):
                schema = json.dumps(schema)
            grammar = self._xgr.Grammar.from_json_schema(schema, any_whitespace=any_whitespace)
            text = str(grammar)
            if _LOOSE_STRING_CHAR in text:
                return self._compiler.compile_grammar(
                    text.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)
                )
            return self._compiler.compile_grammar(grammar)
        if kind == "json_object":
            return self._compiler.compile_builtin_json_grammar()
        if kind == "regex":
            return self._compiler.compile_regex(params.regex)
        if kind == "choice":
            return self._compiler.compile_grammar(_choice_grammar(list(params.choice)))
        if kind == "grammar":
            return self._compiler.compile_grammar(params.grammar)
        if kind == "structural_tag":
            return self._compile_structural_tag(params.structural_tag)
        raise ValueError(f"unknown structured output kind {kind!r}")

    def _compile_structural_tag(self, text: str):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from err
        if isinstance(spec, dict) and "structures" in spec:  # vLLM's legacy form
            tags = [
                self._xgr.StructuralTagItem(
                    begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"]
                )
                for s in spec["structures"]
            ]
            return self._compiler.compile_structural_tag(tags, spec["triggers"])
        return self._compiler.compile_structural_tag(text)

    def new_matcher(self, compiled):
        """A fresh matcher (parsing state) over a compiled grammar."""
        return self._xgr.GrammarMatcher(compiled)
