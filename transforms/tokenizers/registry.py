"""Tokenizers by name.

A spec names one tokenizer and, optionally, its options: ``logmel``,
``mfcc-kmeans[k=100,codebook=gs://bucket/km.safetensors]``. Several specs separated by
commas (outside brackets) make a mixed run: ``logmel,mfcc-kmeans``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from audiotok.transforms.tokenizers.base import Tokenizer, TokenizerConfig


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered tokenizer name.

    Attributes:
        name: the registry key.
        factory: builds the tokenizer from a config (cheap: no weights loaded).
        config_class: the config dataclass.
        defaults: options this name presets (e.g. ``k=500`` for a ``...-km500`` name).
        weights: what weights the tokenizer expects, for ``--tokenizer help``.
    """

    name: str
    factory: Callable[[TokenizerConfig], Tokenizer]
    config_class: type[TokenizerConfig]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: str = "none"


_REGISTRY: dict[str, Entry] = {}

# Modules whose import registers tokenizers. Heavy libraries are imported inside the
# adapters' ``load``, never here.
_BUILTIN_MODULES = ("audiotok.transforms.tokenizers.spectral", "audiotok.transforms.tokenizers.codecs", "audiotok.transforms.tokenizers.ssl")
_builtins_imported = False


def register(name: str, *, defaults: Mapping[str, Any] | None = None, weights: str = "none"):
    """Class decorator: registers a Tokenizer subclass under ``name`` (may be used several times)."""

    def wrap(cls: type[Tokenizer]) -> type[Tokenizer]:
        if name in _REGISTRY and _REGISTRY[name].factory is not cls:
            raise ValueError(f"tokenizer name {name!r} is already registered by {_REGISTRY[name].factory!r}")
        _REGISTRY[name] = Entry(name, cls, cls.config_class, dict(defaults or {}), weights)
        return cls

    return wrap


def _ensure_builtins() -> None:
    global _builtins_imported
    if not _builtins_imported:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_imported = True


def entries() -> dict[str, Entry]:
    _ensure_builtins()
    return dict(sorted(_REGISTRY.items()))


def split_specs(specs: str) -> list[str]:
    """Splits ``a,b[x=1,y=2],c`` at the commas outside brackets."""
    parts, depth, current = [], 0, []
    for ch in specs:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in tokenizer spec {specs!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in tokenizer spec {specs!r}")
    parts.append("".join(current).strip())
    if any(not p for p in parts):
        raise ValueError(f"empty tokenizer name in {specs!r}")
    return parts


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name[k=v,k2=v2]`` -> (name, {k: v, k2: v2})."""
    spec = spec.strip()
    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]"):
        raise ValueError(f"tokenizer spec {spec!r} must end with ']'")
    name, body = spec[:-1].split("[", 1)
    options: dict[str, str] = {}
    for item in split_specs(body) if body.strip() else []:
        if "=" not in item:
            raise ValueError(f"tokenizer option {item!r} in {spec!r} is not key=value")
        key, value = item.split("=", 1)
        options[key.strip().replace("-", "_")] = value.strip()
    return name.strip(), options


def format_spec(name: str, options: Mapping[str, Any]) -> str:
    """(name, options) -> ``name[k=v,...]`` (``name`` alone without options)."""
    return name + ("[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]" if options else "")


# Options that name files or folders read by a tokenizer.
_LOCATION_OPTIONS = ("model", "codebook")


def absolute_locations(specs: str) -> str:
    """``specs`` with every local checkpoint folder and codebook file named by its absolute path,
    so the specs mean the same files in every worker, whatever its working directory (Hub ids
    and remote URLs are left as they are)."""
    from audiotok.transforms import storage
    from audiotok.transforms.tokenizers import weights

    out = []
    for spec in split_specs(specs):
        name, options = parse_spec(spec)
        changed = False
        for key in _LOCATION_OPTIONS:
            value = options.get(key)
            if not value or not storage.is_local(value):
                continue
            if key == "model" and weights.location_kind(value) != "local":
                continue
            options[key] = storage.absolute(value)
            changed = True
        out.append(format_spec(name, options) if changed else spec)
    return ",".join(out)


def create(spec: str, **overrides: Any) -> Tokenizer:
    """Builds (without loading weights) the tokenizer that ``spec`` names.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad options.
    """
    name, options = parse_spec(spec)
    known = entries()
    if name not in known:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(known)}")
    entry = known[name]
    values = {**entry.defaults, **options, **overrides}
    config = entry.config_class.from_dict(values)
    return entry.factory(config)


def create_all(specs: str) -> list[Tokenizer]:
    """Builds every tokenizer of a comma-separated list; stream names must not collide."""
    tokenizers = [create(s) for s in split_specs(specs)]
    seen: dict[str, str] = {}
    for tok in tokenizers:
        for stream in tok.streams:
            if stream.name in seen:
                raise ValueError(f"stream {stream.name!r} is produced twice (by {seen[stream.name]} and {tok.name})")
            seen[stream.name] = tok.name
    return tokenizers


def help_table() -> list[dict[str, Any]]:
    """One row per registered name: family, rate, streams, expected weights (no weights loaded)."""
    rows = []
    for name, entry in entries().items():
        tok = entry.factory(entry.config_class.from_dict(dict(entry.defaults)))
        for stream in tok.streams:
            rows.append({
                "tokenizer": name,
                "family": tok.family,
                "sample_rate": tok.sample_rate,
                "stream": stream.name,
                "kind": stream.kind,
                "frame_rate_hz": stream.frame_rate_hz,
                "num_codebooks": stream.num_codebooks,
                "codebook_size": stream.codebook_size,
                "dim": stream.dim,
                "dtype": stream.dtype,
                "weights": entry.weights,
            })
    return rows
