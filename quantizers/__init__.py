"""Quantizers behind one interface (quantizers.base): GQ+TDC and the baselines VQ, FSQ, LFQ, BSQ, TokenBridge.

    q = build_quantizer("gq", codebook_size=2**16, codebook_dim=16, num_codebooks=1)
    out = q(h)                  # QuantizerOutput(z_q, indices, loss, stats, continuous)
    idx = q.encode(h); z = q.decode(idx)
"""
from .base import Quantizer, QuantizerOutput
from .registry import (RATE_TOLERANCE_BITS, build_quantizer, check_rate, default_codebook_dim, known_quantizers,
                       official_defaults, register_quantizer)

# Importing a method module registers it.
from . import bsq, fsq, gq, lfq, tokenbridge, vq  # noqa: E402,F401  isort: skip

__all__ = ["RATE_TOLERANCE_BITS", "Quantizer", "QuantizerOutput", "build_quantizer", "check_rate", "default_codebook_dim",
           "known_quantizers", "official_defaults", "register_quantizer"]
