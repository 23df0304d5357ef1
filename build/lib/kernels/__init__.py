"""Exact codeword search for Gaussian Quant (GQ) and plain VQ.

    gq_argmax(mu, sigma, codebook, beta=1.0)  -> LongTensor[N]
        argmax_k  sum_d log N(c_kd; mu_d, sigma_d^2) - beta log N(c_kd; 0, 1)
        which, up to row constants, is
        S_k = sum_d [ beta/2 c_kd^2 - 1/2 ((c_kd - mu_d) / sigma_d)^2 ]

    nearest_code(z, codebook)                  -> LongTensor[N]
        argmin_k  sum_d (z_d - c_kd)^2

Shapes: mu, sigma, z: (N, m) float32; codebook: (K, m) float32; all on one
device. Invalid inputs raise ValueError (wrong type/ndim/dtype, shape
mismatch, K == 0, device mismatch, non-finite values or sigma <= 0).

Definition of "exact"
---------------------
The returned index is the maximiser of the *direct* score evaluated in
float64 from the given float32 inputs,

    GQ:  S_k = sum_{d=0..m-1} [ (0.5*beta)*(c*c) - 0.5*(q*q) ],  q = (c - mu)/sigma
    VQ:  S_k = -sum_{d=0..m-1} (z - c)*(z - c)

(each operation rounded to float64, the sum taken left to right over d), with
the LOWEST index among codewords whose float64 scores are equal. This is the
same on every device and backend; ``kernels.reference`` computes it by brute
force, and the tests require index equality with it.

How it is made exact
--------------------
The fast path is a GEMM, S = F G^T with per-row features F = [a | b]
(a = beta/2 - 1/(2 sigma^2), b = mu/sigma^2) and codeword features
G = [c^2 | c] (VQ: F = [z | -1/2], G = [c | ||c||^2]), followed by a row
argmax. The expanded form cancels badly (tiny sigma, dense codebooks), so an
fp32 score is only trusted up to a rigorous bound: |approx_k - S_k| <=
gamma * sum_i |F_i| |G_ki| (gamma = 2 (D+6) 2^-24 for any fp32 summation
order; the bf16x3 tensor-core scan has its own, ~10x larger bound).
Pass 1 streams codebook tiles and keeps, per row, the few best "slots"
(running maxima over strided codeword sets); pass 2 recomputes the candidate
slots in fp32; a row is *certified* when its winner's lower bound beats the
upper bound of every other codeword (per-code bounds inside the candidates,
the next slot maximum plus the per-row bound outside), which proves it is
the unique float64 direct maximiser. Rows not certified (near ties,
duplicates, extreme sigma, dense m = 1 codebooks) fall back to re-ranking,
with the float64 direct formula, every codeword whose fp32 score reaches a
proven lower bound for the winner. Ties therefore always resolve to the
lowest index, and the result never depends on the GEMM's summation order,
tiling or precision. See kernels/core.py for the exact inequalities.

Backends
--------
``backend="auto"`` (default) uses the fused Triton kernels for CUDA tensors
and the tiled torch path otherwise; ``"triton"`` forces Triton (on CPU
tensors it needs ``TRITON_INTERPRET=1`` set before triton is imported);
``"torch"`` forces the torch path. ``exact=False`` lets the Triton scan use
bf16x3 tensor-core products (each operand split into two bf16 terms); the
certificate accounts for their error, so the indices are still exact (a few
more rows may need the fallback). On the torch path it has no effect.
On the Triton path a call is three kernel launches (row features and value
checks, scan, merge + rescore + certificate) and one device->host copy (the
value-check counts and the number of uncertified rows); only rows that need
the fallback cost more. The torch path builds the row features with torch ops
and checks the values with one sync of its own.
Torch matmuls run with float32 matmul precision "highest" temporarily forced
(a process-global setting), so the bound stays valid. Codebook-side features
are cached per codebook tensor (identity + version counter).
"""
from __future__ import annotations

import torch

from .features import gq_problem, vq_problem
from .core import search

__all__ = ["gq_argmax", "nearest_code"]


def gq_argmax(mu: torch.Tensor, sigma: torch.Tensor, codebook: torch.Tensor,
              beta: float = 1.0, *, exact: bool = True, backend: str = "auto") -> torch.Tensor:
    """GQ selection: exact argmax_k of log N(c_k; mu, sigma^2) - beta log N(c_k; 0, I).

    mu, sigma: (N, m) fp32 (sigma > 0); codebook: (K, m) fp32. Returns (N,) int64.
    """
    # defer: the search builds the rows with its backend (Triton: one kernel,
    # value checks read back with the result instead of a sync of their own).
    return search(gq_problem(mu, sigma, codebook, beta, defer=True), backend=backend, exact=exact)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, exact: bool = True,
                 backend: str = "auto") -> torch.Tensor:
    """VQ selection: exact argmin_k ||z - c_k||^2. z: (N, m), codebook: (K, m) fp32."""
    return search(vq_problem(z, codebook, defer=True), backend=backend, exact=exact)
