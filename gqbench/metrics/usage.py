"""Codebook usage, index entropy, perplexity and the effective rate — comparable across methods.

A token is `num_codebooks` sub-indices j, each from a sub-codebook of K entries (GQ/VQ: 256, FSQ: 240,
LFQ/BSQ: 65,536, TokenBridge: 4 at 16 bits/token). Over the N indices of sub-codebook j in the evaluation set:

    usage_j      = #{codes used at least once} / K
    H_j          = −Σ_k p_jk log2 p_jk                      (plug-in entropy of the index histogram, bits)
    perplexity_j = 2^H_j
    rate         = Σ_j Ĥ_j bits/token, Ĥ_j = min(H_j + (m_j − 1) / (2 N ln 2), log2 K)

`rate` is the effective rate: what an ideal entropy coder of each sub-index, independently, would spend — beside
the nominal num_codebooks · log2 K. Ĥ_j is the Miller–Madow estimator (m_j = codes used): the plug-in entropy of
N samples is biased low by about (K − 1) / (2 N ln 2) bits, i.e. ~0.4 bit for a perfectly uniform 65,536-code
quantizer seen through 114k indices; Miller–Madow removes most of it (16-bit uniform, 114,688 indices: plug-in
15.53, Miller–Madow 15.87; the coverage-adjusted Chao–Shen estimator overshoots to 16.3, so we do not use it).

Usage has the same sample-size effect: N indices can touch at most N codes, and a perfectly uniform code shows
E[usage] = 1 − (1 − 1/K)^N (0.83 at K = 65,536, N = 114,688). We report that expectation beside the usage, and
usage relative to it, so a reader cannot mistake a sample-size effect for collapse; and `rate_sample_limited`
= 1 when N < 10 K for some sub-codebook (the rate estimate is then uncertain by a few tenths of a bit).

Differences from the reference (gq-reference §4): it counts rank 0's shard only and adds 1e-5 inside the log;
we count every evaluated index, on every rank, merged.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import EvalBatch, Metric

CODEBOOK_USAGE = "codebook_usage"
CODEBOOK_USAGE_MIN = "codebook_usage_min"
USAGE_IF_UNIFORM = "codebook_usage_if_uniform"  # E[usage] of a perfectly uniform code with this many indices
USAGE_RELATIVE = "codebook_usage_relative"  # usage / USAGE_IF_UNIFORM
INDEX_ENTROPY = "index_entropy_bits"  # plug-in, mean over sub-codebooks
PERPLEXITY = "perplexity"
EFFECTIVE_RATE = "effective_bits_per_token"  # Σ_j Miller–Madow H_j
EFFECTIVE_RATE_PLUGIN = "effective_bits_per_token_plugin"  # Σ_j plug-in H_j
RATE_SAMPLE_LIMITED = "rate_sample_limited"  # 1.0 when some sub-codebook has fewer than 10 K indices
INDICES_PER_CODE = "indices_per_code"  # N / K, per sub-codebook
BITS_PER_TOKEN = "bits_per_token"
CODEBOOK_SIZE = "codebook_size"  # entries per sub-codebook, as built
NUM_CODEBOOKS = "num_codebooks"  # sub-indices per token
CODEBOOK_DIM = "codebook_dim"  # dims per sub-index
TOKENS_PER_IMAGE = "tokens_per_image"
BPP = "bits_per_pixel"
SAMPLE_LIMIT = 10  # indices per code below which the rate is flagged as sample-limited


class CodebookCounter(Metric):
    """Index histograms per sub-codebook, counted on the indices' device: (B, num_codebooks, H, W) int64 batches."""

    def __init__(self, codebook_size: int, num_codebooks: int):
        self.codebook_size, self.num_codebooks = int(codebook_size), int(num_codebooks)
        self.counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.int64)

    def update(self, indices: Tensor | EvalBatch) -> None:
        if isinstance(indices, EvalBatch):
            indices = indices.out.quant.indices
        flat = indices.detach().transpose(0, 1).reshape(indices.shape[1], -1)
        offsets = torch.arange(flat.shape[0], device=flat.device).unsqueeze(1) * self.codebook_size
        codes = (flat + offsets).reshape(-1)
        if self.counts.device != codes.device:
            self.counts = self.counts.to(codes.device)
        # index_add_, not bincount: CUDA's bincount reads the input's max back to the host on every call
        self.counts.view(-1).index_add_(0, codes, torch.ones_like(codes))

    def state(self) -> Tensor:
        return self.counts.cpu()

    def merge(self, states) -> None:
        self.counts = torch.stack([s.cpu() for s in states]).sum(0)

    def merge_(self, counts: Tensor) -> None:
        """Add another process's histogram."""
        self.counts = self.counts + counts.to(self.counts)

    def summary(self) -> dict[str, float]:
        counts = self.counts.double().cpu()
        n = counts.sum(1)  # indices per sub-codebook
        p = counts / n.clamp_min(1).unsqueeze(1)
        entropy = -(torch.where(p > 0, p * p.log2(), torch.zeros_like(p))).sum(1)
        used = (self.counts.cpu() > 0).sum(1).double()
        miller_madow = torch.where(n > 0, entropy + (used - 1).clamp_min(0) / (2 * n.clamp_min(1) * math.log(2)),
                                   torch.zeros_like(entropy))
        miller_madow = miller_madow.clamp(max=math.log2(self.codebook_size))
        usage = used / self.codebook_size
        if_uniform = 1 - torch.exp(n * math.log1p(-1 / self.codebook_size)) if self.codebook_size > 1 else torch.ones_like(n)
        out = {
            CODEBOOK_USAGE: usage.mean().item(),
            CODEBOOK_USAGE_MIN: usage.min().item(),
            USAGE_IF_UNIFORM: if_uniform.mean().item(),
            USAGE_RELATIVE: (usage / if_uniform.clamp_min(1e-12)).mean().item() if n.min() > 0 else 0.0,
            INDEX_ENTROPY: entropy.mean().item(),
            PERPLEXITY: (2.0 ** entropy).mean().item(),
            EFFECTIVE_RATE: miller_madow.sum().item(),
            EFFECTIVE_RATE_PLUGIN: entropy.sum().item(),
            RATE_SAMPLE_LIMITED: float(bool((n < SAMPLE_LIMIT * self.codebook_size).any())),
            INDICES_PER_CODE: (n.mean() / self.codebook_size).item(),
        }
        if len(usage) > 1:
            for j in range(len(usage)):
                out[f"{CODEBOOK_USAGE}/{j}"] = usage[j].item()
                out[f"{PERPLEXITY}/{j}"] = (2.0 ** entropy[j]).item()
        return out

    def protocol(self) -> dict[str, str]:
        return {"protocol.usage": "all evaluated indices, per sub-codebook; effective rate = sum of Miller-Madow "
                                  "entropies; usage beside the expectation of a uniform code with the same N"}


def code_shape(quantizer) -> dict[str, float]:
    """The code as built, which the config may only name (FSQ's levels give ∏ L_i codes, not the nominal 2^k)."""
    return {
        CODEBOOK_SIZE: float(quantizer.codebook_size),
        NUM_CODEBOOKS: float(quantizer.num_codebooks),
        CODEBOOK_DIM: float(getattr(quantizer, "codebook_dim", float("nan"))),
    }


def rate(bits_per_token: float, tokens_per_image: int, image_size: int) -> dict[str, float]:
    """Nominal (fixed-length) rate: no entropy coding, as in the paper."""
    return {
        BITS_PER_TOKEN: float(bits_per_token),
        TOKENS_PER_IMAGE: float(tokens_per_image),
        BPP: bits_per_token * tokens_per_image / float(image_size * image_size),
    }
