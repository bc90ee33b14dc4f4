"""Structured outputs: grammar-constrained decoding with xgrammar (JSON schema, regex, choice,
EBNF grammar, structural tags)."""

from mmcore.structured_outputs.compiler import GrammarCompiler
from mmcore.structured_outputs.manager import StructuredOutputManager

__all__ = ["GrammarCompiler", "StructuredOutputManager"]
