"""Name -> quantizer class registry; `build_quantizer` is the one way the rest of gqbench makes a quantizer."""
from __future__ import annotations

import inspect
import re
from typing import Callable

from ._utils import groups_for_channels
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
    num_codebooks: int | None = None,
    *,
    channels: int | None = None,
    **options,
) -> Quantizer:
    """Make the quantizer registered as `name`, sized by the method itself.

    codebook_size: entries per sub-codebook (a power of 2; FSQ: the nominal size that picks its levels).
    codebook_dim:  dimensions per codeword; None lets the method choose (log2 K for GQ/LFQ/BSQ, len(levels) for FSQ).
    num_codebooks: sub-codebooks (indices) per token; None = as many groups as `channels` latent channels hold
                   (channels / codebook_dim), or 1 without `channels`.
    channels:      the latent width the model gives the quantizer (model.z_channels); when given, the built
                   quantizer must decode to exactly that many channels.
    options:       the method's own keyword arguments (see its class).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(known_quantizers())}")
    if num_codebooks is None:
        num_codebooks = 1
        if channels is not None:
            dims = codebook_dim if codebook_dim is not None else default_codebook_dim(name, codebook_size, **options)
            if dims is None:
                raise ValueError(f"quantizer {name!r} needs codebook_dim or num_codebooks to split {channels} "
                                 "latent channels into groups (both are null)")
            num_codebooks = groups_for_channels(channels, dims)
    quantizer = _REGISTRY[name](
        codebook_size=codebook_size, codebook_dim=codebook_dim, num_codebooks=num_codebooks, **options
    )
    if channels is not None and quantizer.out_channels != channels:
        raise ValueError(f"quantizer {name!r} with num_codebooks={num_codebooks} decodes to {quantizer.out_channels} "
                         f"latent channels but the model has channels={channels}; set model.z_channels="
                         f"{quantizer.out_channels} (or null to take the quantizer's width), or num_codebooks=null")
    return quantizer


RATE_TOLERANCE_BITS = 0.25


def check_rate(quantizer: Quantizer, bits_per_token: float, tolerance: float = RATE_TOLERANCE_BITS) -> None:
    """Error when the built code misses the intended bits per token by more than `tolerance` bits (an equal-bits
    preset that is not equal, e.g. FSQ levels whose product is far from 2^bits)."""
    if abs(quantizer.bits_per_token - bits_per_token) > tolerance:
        raise ValueError(
            f"{type(quantizer).__name__} carries {quantizer.bits_per_token:.2f} bits/token, not the intended "
            f"{bits_per_token:g} (tolerance {tolerance:g} bit): {quantizer.extra_repr()}; fix the preset's "
            "codebook_size / levels / num_codebooks, or set rate=none for an unconstrained size"
        )


def official_defaults(name: str) -> dict[str, object]:
    """The keyword defaults of `name`'s constructor and of the bases it forwards to: the method's official settings
    (every deviation from them is a named option; reports list the ones a run changed)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; known quantizers: {', '.join(known_quantizers())}")
    defaults: dict[str, object] = {}
    for klass in reversed(_REGISTRY[name].__mro__):
        init = klass.__dict__.get("__init__")
        if init is not None:
            defaults.update({p.name: p.default for p in inspect.signature(init).parameters.values()
                             if p.default is not inspect.Parameter.empty})
    return defaults
