"""Fused Triton kernels for passes 1 and 2 of the search (see kernels.core).

_scan_kernel     grid (row blocks, K splits). Each program keeps BLOCK_N rows
                 of features, streams its codebook tiles (DP x BLOCK_K), computes
                 each score tile (fp32 FMA dots, or bf16x3 tensor cores) and
                 folds it into a register tile of running maxima: slot j holds
                 the best score among the split's codewords t*BLOCK_K + j. At
                 the end it writes the Q best slots per row. The score matrix
                 is never written; the output is N x splits x Q.
_rescore_kernel  recomputes the P = Q-1 candidate slots of each row with
                 explicit fp32 FMAs: best value, lowest index, and the largest
                 upper bound (score + per-code error bound) among the others.

Works under TRITON_INTERPRET=1 on CPU tensors (then with one fixed config).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .features import Problem, padded_dim

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

_tuned: dict = {}


@triton.jit
def _tile_scores(f, F, Gt, rows, rmask, k0, K, D: tl.constexpr, DP: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
                 FMA_LOOP: tl.constexpr, MASKED: tl.constexpr):
    cols = k0 + tl.arange(0, BLOCK_K)
    if PREC == "ieee":
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        if FMA_LOOP:
            # Explicit outer-product FMAs over the D real features (no zero
            # padding; better for small D if it does not spill).
            for d in tl.static_range(D):
                fd = tl.load(F + rows * DP + d, mask=rmask, other=0.0)
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
                fc = tl.load(F + rows[:, None] * DP + (c + d16)[None, :], mask=rmask[:, None],
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
def _scan_kernel(F, Gt, out_v, out_t, N, K, tiles_per_split,
                 D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 Q: tl.constexpr, PREC: tl.constexpr, FMA_LOOP: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    if PREC == "ieee":
        f = tl.zeros((BLOCK_N, DP), tl.float32)  # unused: chunks re-read per tile
    else:
        dd = tl.arange(0, DP)
        f = tl.load(F + rows[:, None] * DP + dd[None, :], mask=rmask[:, None], other=0.0)

    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    t_full = tl.minimum(t_end, K // BLOCK_K)
    # Running elementwise max over this split's tiles: slot j holds the best
    # score among codewords t*BLOCK_K + j. One max per score, no shuffles or
    # per-tile bookkeeping in the hot loop; pass 2 recovers the index.
    M = tl.full((BLOCK_N, BLOCK_K), float("-inf"), tl.float32)
    for t in range(t_begin, t_full):  # full tiles: no column masks
        M = tl.maximum(M, _tile_scores(f, F, Gt, rows, rmask, t * BLOCK_K, K, D, DP,
                                       BLOCK_N, BLOCK_K, PREC, FMA_LOOP, False))
    if t_full < t_end:  # the ragged last tile
        M = tl.maximum(M, _tile_scores(f, F, Gt, rows, rmask, t_full * BLOCK_K, K, D, DP,
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
def _rescore_kernel(F, Gt, cand, out_v, out_i, out_w, N, K, tiles_per_split, gamma,
                    P: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_R: tl.constexpr, CH: tl.constexpr):
    # Candidate slot g = split * BLOCK_K + j holds the codewords
    # (split * tiles_per_split + t) * BLOCK_K + j, t < tiles_per_split.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    tt = tl.arange(0, CH)
    big = 2147483647
    v = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    w = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    vub = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    bi = tl.full((BLOCK_R,), big, tl.int32)
    for p in range(P):
        slot = tl.load(cand + rows * P + p, mask=rmask, other=-1)
        base = (slot // BLOCK_K) * tiles_per_split * BLOCK_K + slot % BLOCK_K
        for t0 in range(0, tiles_per_split, CH):
            cols = base[:, None] + (t0 + tt)[None, :] * BLOCK_K
            valid = ((slot[:, None] >= 0) & (t0 + tt < tiles_per_split)[None, :]
                     & (cols < K) & rmask[:, None])
            # Explicit fp32 FMAs: never tensor cores, whatever the defaults.
            acc = tl.zeros((BLOCK_R, CH), tl.float32)
            mag = tl.zeros((BLOCK_R, CH), tl.float32)  # sum_i |F_i| |G_ji|
            for d in tl.static_range(D):
                fd = tl.load(F + rows * DP + d, mask=rmask, other=0.0)
                gd = tl.load(Gt + d * K + cols, mask=valid, other=0.0)
                acc += fd[:, None] * gd
                mag += tl.abs(fd)[:, None] * tl.abs(gd)
            acc = tl.where(valid, acc, float("-inf"))
            ub = tl.where(valid, acc + gamma * mag, float("-inf"))
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
    tl.store(out_v + rows, v, mask=rmask)
    tl.store(out_i + rows, bi, mask=rmask)
    tl.store(out_w + rows, w, mask=rmask)


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
        F, Gt, out_v, out_t, N, K, tps,
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
    Returns (F3 (N, DP3) bf16, Gt3 (DP3, K) bf16, DP3); codebook side cached.
    """
    D = prob.D
    dp3 = padded_dim(3 * D, minimum=16)

    def split(x):
        hi = x.to(torch.bfloat16)
        return hi, (x - hi.float()).to(torch.bfloat16)

    key = ("bf16x3", dp3)
    if key not in prob.cb:
        gh, gl = split(prob.Gt[:D])
        g3 = torch.cat([gh, gl, gh, gh.new_zeros(dp3 - 3 * D, prob.K)])
        if not bool(torch.isfinite(g3).all()):  # only within 2^-9 of the fp32 max
            raise ValueError("codebook features too large for the bf16 split; use exact=True")
        prob.cb[key] = g3.contiguous()
    fh, fl = split(prob.F[:, :D])
    F3 = torch.cat([fh, fh, fl, fh.new_zeros(prob.N, dp3 - 3 * D)], dim=1).contiguous()
    if not bool(torch.isfinite(F3).all()):
        raise ValueError("row features too large for the bf16 split; use exact=True")
    return F3, prob.cb[key], dp3


def _operands(prob: Problem, tc: bool):
    if tc:
        F3, Gt3, dp3 = tc_features(prob)
        if INTERPRET:  # the interpreter's dot reads bf16 bits as integers: widen
            F3, Gt3 = F3.float(), Gt3.float()  # (exact) so the same kernel is tested
        return F3, Gt3, dp3, "bf16x3"
    if prob.DP < 16:  # fp32 tl.dot needs K >= 16 on some Triton versions: zero-pad
        key = ("fp32_pad16",)
        if key not in prob.cb:
            prob.cb[key] = torch.nn.functional.pad(prob.Gt, (0, 0, 0, 16 - prob.DP)).contiguous()
        return (torch.nn.functional.pad(prob.F, (0, 16 - prob.DP)).contiguous(), prob.cb[key],
                prob.D, "ieee")
    return prob.F, prob.Gt, prob.D, "ieee"


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


def rescore(prob: Problem, cand: torch.Tensor, layout, gamma: float):
    """Pass 2 on the (N, P) candidate slots -> (v fp32, idx int64, w fp32).

    w bounds from above the true score of every other codeword in those slots
    (approx + gamma * sum |F||G|), as in torch_search.rescore_slots.
    """
    block_k, tps = layout
    N = prob.N
    P = cand.shape[1]
    dev = prob.F.device
    cand = cand.to(torch.int32).contiguous()
    v = torch.empty(N, dtype=torch.float32, device=dev)
    w = torch.empty(N, dtype=torch.float32, device=dev)
    i = torch.empty(N, dtype=torch.int32, device=dev)
    block_r = 16 if INTERPRET else 32
    ch = min(64, triton.next_power_of_2(tps))
    _rescore_kernel[(triton.cdiv(N, block_r),)](
        prob.F, prob.Gt, cand, v, i, w, N, prob.K, tps, gamma,
        P=P, D=prob.D, DP=prob.DP, BLOCK_K=block_k, BLOCK_R=block_r, CH=ch,
        num_warps=4)
    return v, i.long(), w
