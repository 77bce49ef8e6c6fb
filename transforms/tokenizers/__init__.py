"""Tokenizers: the contract (``base``), the registry, and one adapter module per family."""

from transforms.tokenizers.base import StreamSpec, Tokenizer, TokenizerConfig
from transforms.tokenizers.registry import create, create_all, entries, register

__all__ = ["StreamSpec", "Tokenizer", "TokenizerConfig", "create", "create_all", "entries", "register"]
