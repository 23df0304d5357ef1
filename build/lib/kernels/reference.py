"""Brute-force oracles (fp64, define "exact") and the upstream reference algorithm.

Slow on purpose: used by tests and the benchmark, never by the searches.
"""
from __future__ import annotations

import math

import torch

from .features import gq_direct, vq_direct


def _chunked_argmax(n: int, score_chunk, rows: int) -> torch.Tensor:
    out = []
    for r0 in range(0, n, rows):
        # torch.argmax returns the first maximal index: lowest index on ties.
        out.append(torch.argmax(score_chunk(slice(r0, r0 + rows)), dim=1))
    return torch.cat(out)


def _rows_for(K: int, m: int, budget: int = 1 << 24) -> int:
    return max(1, budget // max(1, K * m))


def reference_gq_argmax(mu, sigma, codebook, beta: float = 1.0) -> torch.Tensor:
    """Oracle: argmax_k of the direct fp64 GQ score, lowest index on ties."""
    mu64, s64, c64 = mu.double(), sigma.double(), codebook.double()
    K, m = codebook.shape
    return _chunked_argmax(
        mu.shape[0],
        lambda sl: gq_direct(mu64[sl, None, :], s64[sl, None, :], c64[None], float(beta)),
        _rows_for(K, m))


def reference_nearest_code(z, codebook) -> torch.Tensor:
    """Oracle: argmin_k of the fp64 squared distance, lowest index on ties."""
    z64, c64 = z.double(), codebook.double()
    K, m = codebook.shape
    return _chunked_argmax(
        z.shape[0], lambda sl: vq_direct(z64[sl, None, :], c64[None]), _rows_for(K, m))


def upstream_gq_argmax(mu, sigma, codebook, beta: float = 1.0, *, chunks: int = 8
                       ) -> torch.Tensor:
    """The reference implementation's algorithm (gq-reference.md section 1.3), fp32.

    For each of ``chunks`` row chunks it materialises the (rows, K, m) tensor
    of log N(c; mu, sigma^2), sums over m, subtracts beta * sum_d log N(c_d; 0, 1)
    and takes the argmax. Memory is rows*K*m*4 bytes per chunk.
    """
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    prior = (-0.5 * codebook * codebook - half_log_2pi).sum(dim=1)  # (K,)
    n = mu.shape[0]
    rows = max(1, -(-n // chunks))
    out = []
    for r0 in range(0, n, rows):
        m_, s_ = mu[r0:r0 + rows, None, :], sigma[r0:r0 + rows, None, :]
        logp = -((codebook[None] - m_) ** 2) / (2 * s_ * s_) - torch.log(s_) - half_log_2pi
        out.append(torch.argmax(logp.sum(dim=2) - beta * prior, dim=1))
    return torch.cat(out)
