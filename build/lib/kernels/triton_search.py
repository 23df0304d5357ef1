"""Fused Triton kernels for the search (see kernels.core).

_prepare_kernel  builds each row's features F (fp64, rounded once to fp32;
                 zero padded to >= 16 columns), the bf16x3 split of F when
                 the tensor-core scan needs it, err_unit and slack64, and
                 counts the rows failing each value check into a small int32
                 status tensor (features.CHECK_MESSAGES order) instead of
                 syncing: the search reads the whole status back once.
_scan_kernel     grid (row blocks, K splits). Each program keeps BLOCK_N rows
                 of features, streams its codebook tiles (DP x BLOCK_K), computes
                 each score tile (fp32 FMA dots, or bf16x3 tensor cores) and
                 folds it into a register tile of running maxima: slot j holds
                 the best score among the split's codewords t*BLOCK_K + j. At
                 the end it writes the Q best slots per row. The score matrix
                 is never written; the output is N x splits x Q.
_rescore_kernel  merges the splits' slot maxima into the row's Q best (P = Q-1
                 candidate slots and s_out, which bounds all other codewords),
                 recomputes the candidate slots with explicit fp32 FMAs (best
                 value, lowest index, largest upper bound among the others),
                 evaluates the certificate in fp64 and writes idx, a certified
                 flag and the fallback threshold per row; it adds the number of
                 uncertified rows to the status.

So the common case is three launches and one device->host copy per call.
Works under TRITON_INTERPRET=1 on CPU tensors (then with one fixed config).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .features import (BF16_ROWS_MSG, CHECK_BF16, CHECK_CODEBOOK, CHECK_F_OVERFLOW,
                       CHECK_MESSAGES, CHECK_SIGMA, CHECK_X, N_CHECKS, SCORE_LIMIT, U64_SLACK,
                       UNDERFLOW_SLACK, Problem, padded_dim)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_N, BLOCK_K, num_warps, num_stages), autotuned per (device, DP,
# precision, N and K magnitude). Chosen from sm_90 ptxas reports: ~32 score
# accumulators + 32 running maxima per thread and no register spills.
# fp32 configs may end with "fma": an explicit outer-product loop instead of
# 16-wide fp32 dots (no padding of small D; kept only if it wins the tuning).
FP32_CONFIGS = [(64, 64, 4, 1), (64, 128, 8, 1), (128, 64, 8, 1), (32, 128, 4, 1), (64, 128, 8, 2),
                (64, 64, 4, 1, "fma"), (64, 128, 8, 1, "fma"), (32, 128, 4, 1, "fma")]
TC_CONFIGS = [(128, 128, 8, 3), (64, 128, 4, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3)]
DEFAULT_FP32 = (64, 128, 8, 1)
DEFAULT_TC = (128, 128, 8, 3)
INTERPRET_CONFIG = (16, 128, 4, 1)  # few, big tiles: the interpreter is slow per op
# Q = P + 1: P candidate slots re-scored by pass 2 with per-code error bounds;
# the Q-th slot maximum bounds every codeword outside them.
Q_EXACT = 4
Q_TC = 8  # bf16x3 error is ~10x fp32: bound the rest by the 8th slot
# status tensor: N_CHECKS value-check counts, then the uncertified row count.
UNCERTIFIED = N_CHECKS
STATUS_LEN = N_CHECKS + 1
CHECK_X_SLOT = tl.constexpr(CHECK_X)
CHECK_SIGMA_SLOT = tl.constexpr(CHECK_SIGMA)
CHECK_CODEBOOK_SLOT = tl.constexpr(CHECK_CODEBOOK)
CHECK_F_SLOT = tl.constexpr(CHECK_F_OVERFLOW)
CHECK_BF16_SLOT = tl.constexpr(CHECK_BF16)
SCORE_LIMIT_C = tl.constexpr(SCORE_LIMIT)

_tuned: dict = {}


@triton.jit
def _f64(x):
    # An fp64 scalar argument as fp64: the interpreter passes Python floats,
    # which would become fp32 constants when they meet a tensor.
    return tl.full([], x, tl.float64)


@triton.jit
def _finite(x):
    return tl.abs(x) < float("inf")  # False for inf and NaN


@triton.jit
def _bf16_round(x):
    # x rounded to the nearest bf16 (ties to even), as an fp32 value: the
    # same bits as torch's .to(torch.bfloat16). Integer arithmetic because the
    # interpreter's own fp32 -> bf16 cast truncates.
    b = x.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _row_features(X, S, sx0, sx1, ss0, ss1, rows, rmask, fi, beta,
                  M: tl.constexpr, GQ: tl.constexpr):
    """Features number fi (a tile of feature ids, -1: zero padding) of the rows.

    GQ: fi < M -> beta/2 - 1/(2 s^2), M <= fi < 2M -> mu/s^2 (of column fi-M);
    VQ: fi < M -> z, fi == M -> -1/2. Evaluated in fp64 like
    features.build_rows_torch, so the fp32 rounding gives the same bits.
    Returns (fp64 features, loaded x, loaded s, load mask).
    """
    if GQ:
        col = tl.where(fi < M, fi, fi - M)
        live = rmask[:, None] & (fi >= 0) & (fi < 2 * M)
    else:
        col = fi
        live = rmask[:, None] & (fi >= 0) & (fi < M)
    x = tl.load(X + rows[:, None] * sx0 + col * sx1, mask=live, other=0.0)
    if GQ:
        s = tl.load(S + rows[:, None] * ss0 + col * ss1, mask=live, other=1.0)
        x64 = x.to(tl.float64)
        s64 = s.to(tl.float64)
        inv = 1.0 / (s64 * s64)
        f = tl.where(fi < M, 0.5 * _f64(beta) - 0.5 * inv, x64 * inv)
        f = tl.where(live, f, 0.0)
    else:
        s = x
        f = tl.where(live, x.to(tl.float64), tl.where(fi == M, -0.5, 0.0))
    return f, x, s, live


@triton.jit
def _count(status, slot: tl.constexpr, bad, rmask):
    tl.atomic_add(status + slot, tl.sum(tl.where(rmask & bad, 1, 0), axis=0))


@triton.jit
def _prepare_kernel(X, S, gmax, cabs, F, F3, err_out, slack_out, status, N,
                    sx0, sx1, ss0, ss1, beta: tl.float64,
                    GQ: tl.constexpr, M: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                    FW: tl.constexpr, TC: tl.constexpr, DP3: tl.constexpr, BLOCK_R: tl.constexpr,
                    SLACK: tl.constexpr, UNDERFLOW: tl.constexpr):
    # int64 rows: row * width offsets pass 2^31 at ~16M rows (bf16x3 rows are 128 wide at m = 16)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    dd = tl.arange(0, FW)
    fi = tl.where(dd < D, dd, -1)
    f64, x, s, live = _row_features(X, S, sx0, sx1, ss0, ss1, rows, rmask, fi, beta, M, GQ)
    f32 = f64.to(tl.float32)
    tl.store(F + rows[:, None] * FW + dd[None, :], f32, mask=rmask[:, None])

    g = tl.load(gmax + dd, mask=dd < DP, other=0.0)
    fabs = tl.abs(f32).to(tl.float64)
    err = tl.sum(fabs * g[None, :], axis=1)
    tl.store(err_out + rows, err, mask=rmask)
    # Slack of the fp64 direct formula (as features.build_rows_torch).
    first = (dd < M)[None, :] & live
    ca = tl.load(cabs + dd, mask=dd < M, other=0.0)[None, :]
    t = ca + tl.abs(x.to(tl.float64))
    if GQ:
        s64 = s.to(tl.float64)
        t = t * t * (1.0 / (s64 * s64)) + tl.abs(_f64(beta)) * ca * ca
    else:
        t = t * t
    slack = SLACK * tl.sum(tl.where(first, t, 0.0), axis=1)
    slack += UNDERFLOW * (1.0 + tl.sum(fabs, axis=1) + tl.sum(g, axis=0))
    tl.store(slack_out + rows, slack, mask=rmask)

    _count(status, CHECK_X_SLOT, tl.max(tl.where(live & ~_finite(x), 1, 0), axis=1) > 0, rmask)
    # a score that could overflow fp32 (features.SCORE_LIMIT); `not <` also catches a NaN err
    score_bad = ~(err < SCORE_LIMIT_C)
    if GQ:
        s_bad = live & ~(_finite(s) & (s > 0))
        _count(status, CHECK_SIGMA_SLOT, tl.max(tl.where(s_bad, 1, 0), axis=1) > 0, rmask)
        f_bad = (dd < D)[None, :] & ~_finite(f32)
        _count(status, CHECK_F_SLOT, (tl.max(tl.where(f_bad, 1, 0), axis=1) > 0) | score_bad, rmask)
    else:
        _count(status, CHECK_F_SLOT, score_bad, rmask)
    g_bad = tl.max(tl.where((dd < DP) & ~_finite(g), 1, 0), axis=0) > 0
    _count(status, CHECK_CODEBOOK_SLOT, g_bad, rmask)

    if TC:
        # [Fh | Fh | Fl | 0]: see tc_features; recomputed from the same fp64
        # values, so hi/lo split exactly the fp32 features stored above.
        ee = tl.arange(0, DP3)
        fi3 = tl.where(ee < 3 * D, ee % D, -1)
        h64, _x, _s, _l = _row_features(X, S, sx0, sx1, ss0, ss1, rows, rmask, fi3, beta, M, GQ)
        h32 = h64.to(tl.float32)
        hi = _bf16_round(h32)
        lo = _bf16_round(h32 - hi)
        part = tl.where((ee >= 2 * D)[None, :], lo, hi)
        tl.store(F3 + rows[:, None] * DP3 + ee[None, :], part, mask=rmask[:, None])
        b_bad = tl.max(tl.where(~(_finite(hi) & _finite(lo)), 1, 0), axis=1) > 0
        _count(status, CHECK_BF16_SLOT, b_bad, rmask)


@triton.jit
def _tile_scores(f, F, sf, Gt, rows, rmask, k0, K, D: tl.constexpr, DP: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
                 FMA_LOOP: tl.constexpr, MASKED: tl.constexpr):
    cols = k0 + tl.arange(0, BLOCK_K)
    if PREC == "ieee":
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if FMA_LOOP:
            # Explicit outer-product FMAs over the D real features (no zero
            # padding; better for small D if it does not spill).
            for d in tl.static_range(D):
                fd = tl.load(F + rows * sf + d, mask=rmask, other=0.0)
                if MASKED:
                    gd = tl.load(Gt + d * K + cols, mask=cols < K, other=0.0)
                else:
                    gd = tl.load(Gt + d * K + cols)
                acc += fd[:, None] * gd[None, :]
        else:
            # fp32 FMA dots over 16-feature chunks (Triton's minimum dot K):
            # one dot over all of DP keeps both operand tiles in registers and
            # spills; re-reading the small F tile per chunk hits L1.
            d16 = tl.arange(0, 16)
            for c in tl.static_range(0, D, 16):
                fc = tl.load(F + rows[:, None] * sf + (c + d16)[None, :], mask=rmask[:, None],
                             other=0.0)
                g_ptrs = Gt + (c + d16)[:, None] * K + cols[None, :]
                if MASKED:
                    gc = tl.load(g_ptrs, mask=cols[None, :] < K, other=0.0)
                else:
                    gc = tl.load(g_ptrs)
                acc = tl.dot(fc, gc, acc, input_precision="ieee")
    else:
        dd = tl.arange(0, DP)
        g_ptrs = Gt + dd[:, None] * K + cols[None, :]
        if MASKED:
            g = tl.load(g_ptrs, mask=cols[None, :] < K, other=0.0)
        else:
            g = tl.load(g_ptrs)
        acc = tl.dot(f, g, out_dtype=tl.float32)  # bf16 operands, fp32 accumulate
    if MASKED:
        acc = tl.where(cols[None, :] < K, acc, float("-inf"))
    return acc


@triton.jit
def _scan_kernel(F, sf, Gt, out_v, out_t, N, K, tiles_per_split,
                 D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 Q: tl.constexpr, PREC: tl.constexpr, FMA_LOOP: tl.constexpr):
    pid_n = tl.program_id(0).to(tl.int64)  # row offsets in int64 (see _prepare_kernel)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    if PREC == "ieee":
        f = tl.zeros((BLOCK_N, DP), tl.float32)  # unused: chunks re-read per tile
    else:
        dd = tl.arange(0, DP)
        f = tl.load(F + rows[:, None] * sf + dd[None, :], mask=rmask[:, None], other=0.0)

    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    t_full = tl.minimum(t_end, K // BLOCK_K)
    # Running elementwise max over this split's tiles: slot j holds the best
    # score among codewords t*BLOCK_K + j. One max per score, no shuffles or
    # per-tile bookkeeping in the hot loop; pass 2 recovers the index.
    M = tl.full((BLOCK_N, BLOCK_K), float("-inf"), tl.float32)
    for t in range(t_begin, t_full):  # full tiles: no column masks
        M = tl.maximum(M, _tile_scores(f, F, sf, Gt, rows, rmask, t * BLOCK_K, K, D, DP,
                                       BLOCK_N, BLOCK_K, PREC, FMA_LOOP, False))
    if t_full < t_end:  # the ragged last tile
        M = tl.maximum(M, _tile_scores(f, F, sf, Gt, rows, rmask, t_full * BLOCK_K, K, D, DP,
                                       BLOCK_N, BLOCK_K, PREC, FMA_LOOP, True))
    # The Q best slots of this split (ties: lowest slot; order is irrelevant
    # to correctness, only the values bound the rest).
    jj = tl.arange(0, BLOCK_K)
    for q in tl.static_range(Q):
        v = tl.max(M, axis=1)
        j = tl.min(tl.where(M == v[:, None], jj[None, :], BLOCK_K), axis=1)
        o = rows * (n_splits * Q) + pid_s * Q + q
        tl.store(out_v + o, v, mask=rmask)
        tl.store(out_t + o, pid_s * BLOCK_K + j, mask=rmask)
        M = tl.where(jj[None, :] == j[:, None], float("-inf"), M)


@triton.jit
def _merge_slots(vals, slots, X, rows, rmask, Q: tl.constexpr, XC: tl.constexpr,
                 BLOCK_R: tl.constexpr):
    """The row's Q largest of its X slot maxima (all splits): (values, slot ids).

    Each split kept its local top Q, so the global Q-th largest entry bounds
    every slot outside the global top Q-1 (ties only shrink the margin).
    Empty entries (-inf) keep slot id -1: nothing to rescore.
    """
    big = 2147483647
    qq = tl.arange(0, Q)
    xx = tl.arange(0, XC)
    R = tl.full((BLOCK_R, Q), float("-inf"), tl.float32)
    S = tl.full((BLOCK_R, Q), -1, tl.int32)
    for x0 in range(0, X, XC):
        xc = x0 + xx
        cv = tl.load(vals + rows[:, None] * X + xc[None, :],
                     mask=rmask[:, None] & (xc < X)[None, :], other=float("-inf"))
        c = tl.max(cv, axis=1)
        mn = tl.min(R, axis=1)
        # Insert the chunk's largest entries while they beat the smallest kept
        # one: at most Q rounds, usually none once the first chunks are in.
        while tl.max(tl.where(c > mn, 1, 0), axis=0) > 0:
            pos = tl.min(tl.where(cv == c[:, None], xc[None, :], big), axis=1)
            take = c > mn
            sid = tl.load(slots + rows * X + pos, mask=take, other=-1)
            at_min = tl.min(tl.where(R == mn[:, None], qq[None, :], Q), axis=1)
            put = take[:, None] & (qq[None, :] == at_min[:, None])
            R = tl.where(put, c[:, None], R)
            S = tl.where(put, sid[:, None], S)
            cv = tl.where(xc[None, :] == pos[:, None], float("-inf"), cv)
            c = tl.max(cv, axis=1)
            mn = tl.min(R, axis=1)
    return R, S


@triton.jit
def _rescore_kernel(F, sf, Gt, vals, slots, X, err_unit, slack64, out_i, out_thr, out_ok, status,
                    N, K, tiles_per_split, gamma_ub, gamma: tl.float64, gamma1: tl.float64,
                    Q: tl.constexpr, XC: tl.constexpr, D: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_R: tl.constexpr, CH: tl.constexpr, UNCERT: tl.constexpr):
    # Candidate slot g = split * BLOCK_K + j holds the codewords
    # (split * tiles_per_split + t) * BLOCK_K + j, t < tiles_per_split.
    # int64 rows: row * width offsets pass 2^31 at ~16M rows (bf16x3 rows are 128 wide at m = 16)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    R, S = _merge_slots(vals, slots, X, rows, rmask, Q, XC, BLOCK_R)
    qq = tl.arange(0, Q)
    s_out = tl.min(R, axis=1)
    at_out = tl.min(tl.where(R == s_out[:, None], qq[None, :], Q), axis=1)
    S = tl.where(qq[None, :] == at_out[:, None], -1, S)  # s_out only bounds

    tt = tl.arange(0, CH)
    big = 2147483647
    v = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    w = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    vub = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    bi = tl.full((BLOCK_R,), big, tl.int32)
    for p in range(Q):
        slot = tl.sum(tl.where(qq[None, :] == p, S, 0), axis=1)
        base = (slot // BLOCK_K) * tiles_per_split * BLOCK_K + slot % BLOCK_K
        for t0 in range(0, tiles_per_split, CH):
            cols = base[:, None] + (t0 + tt)[None, :] * BLOCK_K
            valid = ((slot[:, None] >= 0) & (t0 + tt < tiles_per_split)[None, :]
                     & (cols < K) & rmask[:, None])
            # Explicit fp32 FMAs: never tensor cores, whatever the defaults.
            acc = tl.zeros((BLOCK_R, CH), tl.float32)
            mag = tl.zeros((BLOCK_R, CH), tl.float32)  # sum_i |F_i| |G_ji|
            # A loop, not static_range: unrolled, the hoisted F loads spill
            # (sm_90 ptxas: KBs of local memory at D = 32).
            for d in range(D):
                fd = tl.load(F + rows * sf + d, mask=rmask, other=0.0)
                gd = tl.load(Gt + d * K + cols, mask=valid, other=0.0)
                acc += fd[:, None] * gd
                mag += tl.abs(fd)[:, None] * tl.abs(gd)
            acc = tl.where(valid, acc, float("-inf"))
            ub = tl.where(valid, acc + gamma_ub * mag, float("-inf"))
            cmax = tl.max(acc, axis=1)
            cidx = tl.min(tl.where(valid & (acc == cmax[:, None]), cols, big), axis=1)
            # Upper bounds: best of the chunk except its winner, and the chunk's
            # winner itself (it is a runner-up if the running best stays).
            c2 = tl.max(tl.where(cols == cidx[:, None], float("-inf"), ub), axis=1)
            c1 = tl.max(tl.where(cols == cidx[:, None], ub, float("-inf")), axis=1)
            better = (cmax > v) | ((cmax == v) & (cidx < bi))
            # The displaced best (bound vub) becomes a runner-up.
            w = tl.where(better, tl.maximum(tl.maximum(w, vub), c2),
                         tl.maximum(w, tl.maximum(c1, c2)))
            vub = tl.where(better, c1, vub)
            v = tl.where(better, cmax, v)
            bi = tl.where(better, cidx, bi)

    # Certificate (kernels.core), in fp64: low is a proven lower bound on the
    # winner's direct score minus 2 s; the winner is certified if it beats
    # every rival's upper bound, inside (w) and outside (s_out + E1) the slots.
    e = tl.zeros((BLOCK_R,), tl.float64)
    for d in tl.static_range(D):
        fd = tl.load(F + rows * sf + d, mask=rmask, other=0.0)
        gd = tl.load(Gt + d * K + bi, mask=rmask & (bi < K), other=0.0)
        e += tl.abs(fd).to(tl.float64) * tl.abs(gd).to(tl.float64)
    g = _f64(gamma)
    u = tl.load(err_unit + rows, mask=rmask, other=0.0)
    low = v.to(tl.float64) - g * e - 2.0 * tl.load(slack64 + rows, mask=rmask, other=0.0)
    ok = (low > w.to(tl.float64)) & (low > s_out.to(tl.float64) + _f64(gamma1) * u)
    tl.store(out_i + rows, bi.to(tl.int64), mask=rmask)
    # Fallback threshold: a lower bound on the fp32 score of the fp64 winner.
    tl.store(out_thr + rows, low - g * u, mask=rmask)
    tl.store(out_ok + rows, tl.where(ok, 1, 0).to(tl.int8), mask=rmask)
    tl.atomic_add(status + UNCERT, tl.sum(tl.where(rmask & ~ok, 1, 0), axis=0))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def _launch_scan(F, Gt, D: int, cfg, q: int, prec: str, splits: int | None):
    block_n, block_k, warps, stages = cfg[:4]
    fma_loop = len(cfg) > 4 and cfg[4] == "fma"
    N, K = F.shape[0], Gt.shape[1]
    ntiles = triton.cdiv(K, block_k)
    row_blocks = triton.cdiv(N, block_n)
    if splits is None:
        # Enough programs for ~4 waves when N alone cannot fill the GPU.
        splits = max(1, min(ntiles, triton.cdiv(4 * _num_sms(F.device), row_blocks)))
    tps = triton.cdiv(ntiles, max(1, min(splits, ntiles)))
    splits = triton.cdiv(ntiles, tps)
    out_v = torch.empty(N, splits * q, dtype=torch.float32, device=F.device)
    out_t = torch.empty(N, splits * q, dtype=torch.int32, device=F.device)
    _scan_kernel[(row_blocks, splits)](
        F, F.stride(0), Gt, out_v, out_t, N, K, tps,
        D=D, DP=F.shape[1], BLOCK_N=block_n, BLOCK_K=block_k, Q=q, PREC=prec,
        FMA_LOOP=fma_loop, num_warps=warps, num_stages=stages)
    return out_v, out_t, tps


def tc_features(prob: Problem):
    """bf16 operands whose single tensor-core product is the bf16x3 product F . G.

    x = hi + lo + r, hi = bf16(x), lo = bf16(x - hi) (x - hi is exact in fp32),
    |r| <= 2^-18 |x|; bf16 x bf16 products are exact in fp32, so
        [Fh | Fh | Fl] . [Gh ; Gl ; Gh] = Fh.Gh + Fh.Gl + Fl.Gh
    misses only Fl.Gl and the r terms: <= 3 * 2^-18 relative per product
    (features.bf16x3_gamma). Width 3 D padded to a power of two >= 16.
    Returns (F3 (N, DP3) bf16, Gt3 (DP3, K) bf16, DP3); codebook side cached,
    row side as written by prepare if it ran with tc=True (else torch ops and
    one sync for the finiteness check). Under the interpreter both are fp32
    (the interpreter's dot reads bf16 bits as integers; widening is exact,
    so the same kernel is tested).
    """
    D = prob.D
    dp3 = padded_dim(3 * D, minimum=16)

    def split(x):
        hi = x.to(torch.bfloat16)
        return hi, (x - hi.float()).to(torch.bfloat16)

    key = ("bf16x3", dp3, INTERPRET)
    if key not in prob.cb:
        gh, gl = split(prob.Gt[:D])
        g3 = torch.cat([gh, gl, gh, gh.new_zeros(dp3 - 3 * D, prob.K)])
        if not bool(torch.isfinite(g3).all()):  # only within 2^-9 of the fp32 max
            # A non-finite codebook gets its own message, as with exact=True
            # (the deferred value checks are read only after the scan).
            if not bool(torch.isfinite(prob.cb["gmax"]).all()):
                raise ValueError(CHECK_MESSAGES[prob.kind][CHECK_CODEBOOK])
            raise ValueError("codebook features too large for the bf16 split; use exact=True")
        prob.cb[key] = (g3.float() if INTERPRET else g3).contiguous()
    if "bf16x3" in prob.row_ops:
        return prob.row_ops["bf16x3"], prob.cb[key], dp3
    fh, fl = split(prob.F[:, :D])
    F3 = torch.cat([fh, fh, fl, fh.new_zeros(prob.N, dp3 - 3 * D)], dim=1).contiguous()
    if not bool(torch.isfinite(F3).all()):
        raise ValueError(BF16_ROWS_MSG)
    return (F3.float() if INTERPRET else F3), prob.cb[key], dp3


def _operands(prob: Problem, tc: bool):
    if tc:
        F3, Gt3, dp3 = tc_features(prob)
        return F3, Gt3, dp3, "bf16x3"
    if prob.DP < 16:  # fp32 tl.dot needs K >= 16 on some Triton versions: zero-pad
        key = ("fp32_pad16",)
        if key not in prob.cb:
            prob.cb[key] = torch.nn.functional.pad(prob.Gt, (0, 0, 0, 16 - prob.DP)).contiguous()
        if key in prob.row_ops:  # prepare wrote F into a zero-padded 16-column buffer
            return prob.row_ops[key], prob.cb[key], prob.D, "ieee"
        return (torch.nn.functional.pad(prob.F, (0, 16 - prob.DP)).contiguous(), prob.cb[key],
                prob.D, "ieee")
    return prob.F, prob.Gt, prob.D, "ieee"


def new_status(device) -> torch.Tensor:
    """Zeroed int32 counters: N_CHECKS value checks, then uncertified rows."""
    return torch.zeros(STATUS_LEN, dtype=torch.int32, device=device)


def prepare(prob: Problem, status: torch.Tensor, *, tc: bool = False) -> None:
    """Build prob's rows (F, err_unit, slack64; bf16x3 split if tc) in one launch.

    Invalid values are not raised here: the kernel adds the number of rows
    failing each check to ``status`` (features.CHECK_MESSAGES order), and the
    caller raises after its one host read (features.raise_failed_check).
    Until then the features of a bad row are garbage, never out-of-bounds.
    """
    x, N, D, DP = prob.x, prob.N, prob.D, prob.DP
    dev = x.device
    gq = prob.kind == "gq"
    s = prob.s if gq else x  # VQ: a dummy pointer, never read
    fw = max(DP, 16)  # the fp32 scan reads >= 16 columns (see _operands)
    F = torch.empty(N, fw, dtype=torch.float32, device=dev)
    err = torch.empty(N, dtype=torch.float64, device=dev)
    slack = torch.empty(N, dtype=torch.float64, device=dev)
    dp3 = padded_dim(3 * D, minimum=16)
    F3 = (torch.empty(N, dp3, dtype=torch.float32 if INTERPRET else torch.bfloat16, device=dev)
          if tc else F)
    block_r = max(1, min(64, 4096 // max(fw, dp3 if tc else 1)))
    block_r = 1 << (block_r.bit_length() - 1)
    if INTERPRET:
        block_r = max(block_r, triton.next_power_of_2(max(N, 1)))  # few, big programs
    _prepare_kernel[(triton.cdiv(N, block_r),)](
        x, s, prob.cb["gmax"], prob.cb["cabs"], F, F3, err, slack, status, N,
        x.stride(0), x.stride(1), s.stride(0), s.stride(1), prob.beta,
        GQ=gq, M=prob.c.shape[1], D=D, DP=DP, FW=fw, TC=tc, DP3=dp3, BLOCK_R=block_r,
        SLACK=U64_SLACK, UNDERFLOW=UNDERFLOW_SLACK, num_warps=4)
    if fw != DP:
        prob.row_ops[("fp32_pad16",)] = F
        F = F[:, :DP]
    if tc:
        prob.row_ops["bf16x3"] = F3
    prob.F, prob.err_unit, prob.slack64 = F, err, slack


def cuda_time_ms(fn, reps: int = 5) -> float:
    """Milliseconds per call: mean of `reps` back-to-back calls between CUDA events, after one warm-up."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def pick_config(prob: Problem, tc: bool, operands=None):
    """Autotune (once per device/DP/precision/size bucket) on big CUDA problems."""
    if INTERPRET or prob.F.device.type != "cuda":
        return INTERPRET_CONFIG
    default = DEFAULT_TC if tc else DEFAULT_FP32
    if prob.N * prob.K < (1 << 24):  # small: compile one config only
        return default
    key = (prob.F.device.index, prob.DP, tc, prob.N.bit_length(), prob.K.bit_length())
    if key not in _tuned:
        F, Gt, D, prec = operands or _operands(prob, tc)
        q = Q_TC if tc else Q_EXACT
        timings = {}
        for cfg in (TC_CONFIGS if tc else FP32_CONFIGS):
            if len(cfg) > 4 and D > 8:  # the FMA loop spills registers beyond 8 features
                continue
            try:
                timings[cfg] = cuda_time_ms(lambda: _launch_scan(F, Gt, D, cfg, q, prec, None))
            except Exception:  # e.g. out of shared memory / registers on this GPU
                continue
        _tuned[key] = min(timings, key=timings.get) if timings else default
    return _tuned[key]


def scan(prob: Problem, *, tc: bool = False, config=None, splits: int | None = None):
    """Pass 1 -> (vals (N, X) fp32, slot ids (N, X) int32, (BLOCK_K, tiles per split), q)."""
    ops = _operands(prob, tc)
    if ops[1].shape[0] * prob.K >= 2 ** 31:
        raise ValueError(f"codebook too large for the Triton path (K={prob.K}); use backend='torch'")
    cfg = config or pick_config(prob, tc, ops)
    q = Q_TC if tc else Q_EXACT
    F, Gt, D, prec = ops
    out_v, out_t, tps = _launch_scan(F, Gt, D, cfg, q, prec, splits)
    return out_v, out_t, (cfg[1], tps), q


def rescore(prob: Problem, vals: torch.Tensor, slots: torch.Tensor, layout, q: int,
            status: torch.Tensor, *, gamma: float, gamma_ub: float, gamma1: float):
    """Merge + pass 2 + certificate -> (idx int64, thr fp64, ok int8), per row.

    ok = 1: idx is certified (kernels.core). Otherwise thr is the fallback
    threshold (a proven lower bound on the fp32 score of the fp64 winner);
    status[UNCERTIFIED] counts those rows. gamma_ub: fp32 per-code bound
    used for rival upper bounds (as in torch_search.rescore_slots); gamma:
    fp32 bound for the winner (fp64); gamma1: bound of the scan that produced
    vals (fp32 or bf16x3), for everything outside the candidates.
    """
    block_k, tps = layout
    N, X = vals.shape
    dev = vals.device
    idx = torch.empty(N, dtype=torch.int64, device=dev)
    thr = torch.empty(N, dtype=torch.float64, device=dev)
    ok = torch.empty(N, dtype=torch.int8, device=dev)
    block_r = 16 if INTERPRET else 32
    ch = min(32, triton.next_power_of_2(tps))  # 64 spills on sm_90 with 4 warps
    xc = min(64, triton.next_power_of_2(X))
    _rescore_kernel[(triton.cdiv(N, block_r),)](
        prob.F, prob.F.stride(0), prob.Gt, vals, slots, X, prob.err_unit, prob.slack64,
        idx, thr, ok, status, N, prob.K, tps, gamma_ub, gamma, gamma1,
        Q=q, XC=xc, D=prob.D, BLOCK_K=block_k, BLOCK_R=block_r, CH=ch, UNCERT=UNCERTIFIED,
        num_warps=4)
    return idx, thr, ok
