"""Tiled torch implementation of the search passes (CPU, or any torch device).

Pass 1 folds every (rows x tile) fp32 score tile into a running elementwise
maximum M (rows x tile): slot j of M is the best score among codewords
j, j + tile, j + 2 tile, ... An elementwise torch.maximum is the cheapest
reduction torch offers per element (cheaper than amax/max over a dim, far
cheaper than max with indices); both 2 MiB buffers stay in cache. The winner's
index is recovered by pass 2, which recomputes only the candidate slots.

Extra memory is O(tile): the score tile, M, a slot-major copy of the codebook
features (K x DP, codebook-sized) and small gathers; never an N x K matrix.
"""
from __future__ import annotations

import torch

from .features import Problem, ieee_fp32_matmul

NEG_INF = float("-inf")
BIG = torch.iinfo(torch.long).max

# Measured on a 2-core AVX-512 host (1 MiB L2 per core, one thread): for
# m = 4 and 16, 1024 x 512 tiles gave matmul + maximum within ~1.2-1.3x of
# the best plain tiled matmul; narrower tiles cost more in pass 2 (K/tile
# codewords per slot), wider ones (1024+) slow the m = 4 matmul.
ROWS = 1024
TILE = 512


def tile_bytes(prob: Problem, rows: int = ROWS, tile: int = TILE) -> int:
    """Bytes of the scratch buffers the torch path allocates (computed, not measured)."""
    r = min(rows, prob.N)
    t = min(tile, prob.K)
    T = -(-prob.K // t)
    scan = 4 * 2 * r * t                      # score tile + running max
    slot_major = 4 * t * T * prob.DP          # codebook features, slot-major copy
    rr = _rescore_rows(T, prob.DP)
    rescore = min(rr, prob.N) * T * (8 * prob.DP + 4 * 4 + 8 * 2 + 1)
    return scan + slot_major + rescore


def scan_torch(prob: Problem, q: int = 4, *, rows: int = ROWS, tile: int = TILE
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pass 1 -> (vals (N, q) fp32, slot ids (N, q) int64 (-1 = none), tile).

    vals are the q largest slot maxima of each row, descending.
    """
    F, Gt, N, K = prob.F, prob.Gt, prob.N, prob.K
    dev = F.device
    tile = min(tile, K)
    rows = min(rows, N)
    buf = torch.empty(rows * tile, dtype=torch.float32, device=dev)
    M = torch.empty(rows * tile, dtype=torch.float32, device=dev)
    out_v = torch.full((N, q), NEG_INF, dtype=torch.float32, device=dev)
    out_t = torch.full((N, q), -1, dtype=torch.long, device=dev)
    kq = min(q, tile)
    with ieee_fp32_matmul():
        for r0 in range(0, N, rows):
            r = min(rows, N - r0)
            Fr = F[r0:r0 + r]
            Mv = M[:r * tile].view(r, tile)  # contiguous: written in place
            torch.mm(Fr, Gt[:, :tile], out=Mv)
            for k0 in range(tile, K, tile):
                kw = min(tile, K - k0)
                bv = buf[:r * kw].view(r, kw)
                torch.mm(Fr, Gt[:, k0:k0 + kw], out=bv)
                if kw == tile:
                    torch.maximum(Mv, bv, out=Mv)
                else:  # ragged last tile: slots >= kw have one codeword less
                    Mv[:, :kw] = torch.maximum(Mv[:, :kw], bv)
            v, t = torch.topk(Mv, kq, dim=1)
            out_v[r0:r0 + r, :kq] = v
            out_t[r0:r0 + r, :kq] = t
    return out_v, out_t, tile


def _rescore_rows(T: int, dp: int) -> int:
    # ~512 KiB of gathered codebook features per chunk: stays in L2 for bmm
    return max(1, (1 << 17) // max(1, T * dp))


def rescore_slots(prob: Problem, Gs: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor,
                  gamma: float | None):
    """Pass 2 for one candidate slot per row (slots: (A,), -1 = none), in fp32.

    Returns per row: cmax (best score in the slot), cidx (its lowest index),
    c1 and c2: bounds on the true scores of cidx and of the slot's best other
    codeword. With ``gamma`` these are per-code upper bounds
    (score + gamma |F|.|G_j|); with ``gamma=None`` (cheap first pass) c1 and
    c2 are raw scores and the caller adds a per-row bound.
    """
    F, K = prob.F, prob.K
    tile, T, _ = Gs.shape
    dev = F.device
    A = rows.numel()
    out = [torch.empty(A, dtype=torch.float32, device=dev) for _ in range(3)]
    cidx = torch.empty(A, dtype=torch.long, device=dev)
    jt = torch.arange(T, device=dev) * tile
    chunk = _rescore_rows(T, prob.DP)
    ragged = T * tile != K
    with ieee_fp32_matmul():
        for a0 in range(0, A, chunk):
            sl = slice(a0, a0 + chunk)
            s = slots[sl]
            Gr = torch.index_select(Gs, 0, s.clamp(min=0))  # (r, T, DP) block copies
            Fr = F[rows[sl]].unsqueeze(2)
            sc = torch.bmm(Gr, Fr).squeeze(2)
            if gamma is None and not ragged and bool((s >= 0).all()):
                # Fast path (stage A). torch.max's index choice on ties does not
                # matter: a tie leaves c2 == cmax, which fails the certificate.
                cmax, j = torch.max(sc, dim=1)
                sc.scatter_(1, j[:, None], NEG_INF)
                out[0][sl] = cmax
                out[1][sl] = cmax
                out[2][sl] = sc.amax(dim=1)
                cidx[sl] = s + j * tile
                continue
            cols = s[:, None] + jt
            valid = (s[:, None] >= 0) & (cols < K)
            if gamma is None:
                ub = sc
            else:
                ub = torch.baddbmm(sc.unsqueeze(2), Gr.abs(), Fr.abs(), alpha=gamma).squeeze(2)
                ub.masked_fill_(~valid, NEG_INF)
            sc.masked_fill_(~valid, NEG_INF)
            cmax = sc.amax(dim=1)
            ci = torch.where(valid & (sc == cmax[:, None]), cols, BIG).amin(dim=1)
            is_c = cols == ci[:, None]
            out[0][sl] = cmax
            out[1][sl] = cmax if gamma is None else torch.where(is_c, ub, NEG_INF).amax(dim=1)
            out[2][sl] = torch.where(is_c, NEG_INF, ub).amax(dim=1)
            cidx[sl] = ci
    cmax, c1, c2 = out
    return cmax, cidx, c1, c2


def _round_down_f32(x: torch.Tensor) -> torch.Tensor:
    """Largest fp32 <= x (fp64): for fp32 s, s >= x  <=>  s >= result."""
    y = x.float()
    return torch.where(y.double() > x, torch.nextafter(y, torch.full_like(y, NEG_INF)), y)


def exact_fallback(prob: Problem, rows: torch.Tensor, thr: torch.Tensor, *,
                   budget: int | None = None) -> torch.Tensor:
    """Pass 3 for rows the certificate rejected: fp64 re-rank above a threshold.

    ``thr`` (fp64, one per row) is a proven lower bound on the fp32 GEMM score
    of the fp64-best codeword, so every codeword at or above it is re-scored
    with the direct fp64 formula and the best wins, lowest index on ties.
    Codeword tiles are visited in increasing index order and merged with a
    strict ``>``, so the lower index is kept across tiles too. ``budget``
    caps the fp32 score chunk (elements): small on CPU (cache), large on GPU
    (few launches, the rows are few).
    """
    F, Gt, K = prob.F, prob.Gt, prob.K
    dev = F.device
    if budget is None:
        budget = 1 << 21 if dev.type == "cuda" else 1 << 16
    A = rows.numel()
    chunk_rows = max(1, min(A, budget // min(K, 4096)))
    tile = max(1, min(K, budget // chunk_rows))
    out = torch.empty(A, dtype=torch.long, device=dev)
    big = torch.iinfo(torch.long).max
    thr32 = _round_down_f32(thr)
    with ieee_fp32_matmul():
        for a0 in range(0, A, chunk_rows):
            rr = rows[a0:a0 + chunk_rows]
            th = thr32[a0:a0 + chunk_rows, None]
            ra = rr.numel()
            Fr = F[rr]
            best = torch.full((ra,), NEG_INF, dtype=torch.float64, device=dev)
            bidx = torch.full((ra,), -1, dtype=torch.long, device=dev)
            for k0 in range(0, K, tile):
                sc = Fr @ Gt[:, k0:k0 + tile]
                pr, pc = torch.nonzero(sc >= th, as_tuple=True)
                if pr.numel() == 0:
                    continue
                pc = pc + k0
                s = prob.direct_scores(rr[pr], pc)
                tb = torch.full((ra,), NEG_INF, dtype=torch.float64, device=dev)
                tb.scatter_reduce_(0, pr, s, reduce="amax")
                hit = s == tb[pr]
                ti = torch.full((ra,), big, dtype=torch.long, device=dev)
                ti.scatter_reduce_(0, pr[hit], pc[hit], reduce="amin")
                better = tb > best
                best = torch.where(better, tb, best)
                bidx = torch.where(better, ti, bidx)
            out[a0:a0 + ra] = bidx
    if bool((out < 0).any()):  # cannot happen if the error bound holds
        raise RuntimeError("exact_fallback found no candidate; error bound violated")
    return out
