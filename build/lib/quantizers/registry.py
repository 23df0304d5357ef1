"""Name -> quantizer class registry; `build_quantizer` is the one way the rest of gqbench makes a quantizer."""
from __future__ import annotations

import re
from typing import Callable

from .base import Quantizer

_REGISTRY: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: `@register_quantizer("gq")`. Names are lowercase identifiers and unique."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"quantizer name {name!r} must be a lowercase identifier like 'gq' or 'fsq'")

    def decorate(cls: type[Quantizer]) -> type[Quantizer]:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"{cls!r} registered as {name!r} is not a subclass of quantizers.Quantizer")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"quantizer name {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def known_quantizers() -> list[str]:
    return sorted(_REGISTRY)


def default_codebook_dim(name: str, codebook_size: int | None, **options) -> int | None:
    """The dims per group `name` picks by itself for this size and options (None if it has no default)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(known_quantizers())}")
    return _REGISTRY[name].default_codebook_dim(codebook_size, **options)


def build_quantizer(
    name: str,
    codebook_size: int,
    codebook_dim: int | None = None,
    num_codebooks: int = 1,
    **options,
) -> Quantizer:
    """Make the quantizer registered as `name`.

    codebook_size: entries per sub-codebook (a power of 2).
    codebook_dim:  dimensions per codeword; None lets the method choose.
    num_codebooks: sub-codebooks (indices) per token.
    options:       the method's own keyword arguments (see its class).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(known_quantizers())}")
    return _REGISTRY[name](
        codebook_size=codebook_size, codebook_dim=codebook_dim, num_codebooks=num_codebooks, **options
    )
