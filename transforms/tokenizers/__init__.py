"""Tokenizers: the contract (``base``), the registry, and one adapter module per family."""

from audiotok.transforms.tokenizers.base import StreamSpec, Tokenizer, TokenizerConfig
from audiotok.transforms.tokenizers.registry import create, create_all, entries, register

__all__ = ["StreamSpec", "Tokenizer", "TokenizerConfig", "create", "create_all", "entries", "register"]
