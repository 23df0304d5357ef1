"""The one search core behind gq_argmax and nearest_code.

    pass 0  rows     build the row features F (features.build_rows_torch, or
                     on the Triton path one prepare kernel that counts rows
                     failing the value checks into a status tensor instead
                     of syncing)
    pass 1  scan     stream codebook tiles through the GEMM (fp32, or bf16x3
                     tensor cores), fold them into running elementwise maxima
                     ("slots": slot j = best of codewords j, j+W, j+2W, ...),
                     keep per row the Q = P+1 largest slot maxima: P candidate
                     slots and s_out, the Q-th, which bounds every codeword
                     outside the candidates
    pass 2  rescore  recompute the candidate slots in fp32: best score v, its
                     lowest index i, and w = max over the other codewords j of
                     approx_j + e_j, e_j = gamma |F| . |G_j| (per-code bound)
    certify          e_i = gamma |F| . |G_i| (fp64), E1 = gamma1 |F| . max|G|,
                     s = fp64 slack of the direct formula:
                         v - e_i - 2s > w   and   v - e_i - 2s > s_out + E1
                     => i is the unique maximiser of the direct fp64 score
    pass 3  fallback the other rows: every codeword whose fp32 score is
                     >= v - e_i - 2s - gamma |F| . max|G| (a proven lower bound
                     for the fp64 winner) is re-ranked with the fp64 formula.

On the Triton path the split merge, pass 2 and the certificate are one
kernel, and the call reads the status (value checks + number of uncertified
rows) back to the host once; only when rows are uncertified does it look
for them (torch.nonzero) and run the fallback.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import torch_search
from .features import Problem, bf16x3_gamma, build_rows_torch, fp32_gamma, raise_failed_check

BACKENDS = ("auto", "triton", "torch")
# Per-code upper bounds use GAMMA_UB * gamma: 1.25x covers the rounding of
# approx + gamma*|F||G| evaluated in fp32.
GAMMA_UB = 1.25


# The Triton path runs only on CUDA or under TRITON_INTERPRET=1 set before triton is imported, so its tests
# (tests/test_kernels.py interpreter checks, tests/device_smoke.py) run in subprocesses that mutmut cannot tie
# to the function: left out of `make mutate`, not untested.
def _triton_module():  # pragma: no mutate block
    try:
        from . import triton_search
    except ImportError as e:  # triton missing or broken
        raise ValueError(f"backend='triton' needs a working triton install ({e})") from e
    return triton_search


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            _triton_module()
        except ValueError:
            return "torch"
        return "triton"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' on {device} tensors needs TRITON_INTERPRET=1 set before "
            "triton is imported (or CUDA tensors)")
    return backend


def _lower_bound(prob: Problem, v: torch.Tensor, idx: torch.Tensor, rows, gamma: float):
    """Proven lower bound on the true score of codeword idx (fp32 score v), minus 2 s.

    Rows whose every rival is bounded strictly below it are certified.
    """
    e_i = gamma * (prob.F[rows].abs().double() * prob.Gt[:, idx].t().abs().double()).sum(dim=1)
    return v.double() - e_i - 2 * prob.slack64[rows]


def search(prob: Problem, *, backend: str = "auto", exact: bool = True,
           stats: dict | None = None, **tuning) -> torch.Tensor:
    """Exact argmax_k of the direct fp64 score, lowest index on ties (LongTensor[N])."""
    # The error bounds assume fp32 products: a caller's autocast region must not turn the GEMMs into bf16.
    with torch.autocast(device_type=prob.c.device.type, enabled=False):
        return _search(prob, backend=backend, exact=exact, stats=stats, **tuning)


def _search(prob: Problem, *, backend: str, exact: bool, stats: dict | None, **tuning) -> torch.Tensor:
    dev = prob.c.device
    which = resolve_backend(backend, dev)
    if prob.N == 0:
        if prob.F is None:
            build_rows_torch(prob)  # still raises on a bad codebook
        return torch.empty(0, dtype=torch.long, device=dev)
    if which == "triton":
        ts = _triton_module()
        idx, thr, ok, status, width, q = triton_launches(prob, exact, **tuning)
        counts = status.tolist()  # the call's one device->host sync
        raise_failed_check(prob.kind, counts)
        n_bad = counts[ts.UNCERTIFIED]
        if n_bad:
            bad = torch.nonzero(ok == 0).flatten()
            idx[bad] = torch_search.exact_fallback(prob, bad, thr[bad])
    else:
        if prob.F is None:
            build_rows_torch(prob)
        # No CPU tensor cores: exact=False is the same search.
        q = 4
        gamma = fp32_gamma(prob.DP)
        vals, slots, width = torch_search.scan_torch(prob, q, **tuning)
        Gs = prob.slot_major(width)
        idx, bad, low = _rescore_progressive(prob, vals, slots, Gs, gamma, GAMMA_UB * gamma)
        n_bad = bad.numel()
        if n_bad:
            idx[bad] = torch_search.exact_fallback(prob, bad, low - gamma * prob.err_unit[bad])
    if stats is not None:
        stats.update(backend=which, rows=prob.N, fallback_rows=int(n_bad),
                     slot_layout=width, candidates=q - 1)
    return idx


def triton_launches(prob: Problem, exact: bool = True, **tuning):  # pragma: no mutate block
    """The Triton path's kernels (prepare if the rows are not built, scan,
    rescore), no host sync: -> (idx, thr, ok, status, slot layout, q).

    Nothing is checked yet: the caller reads ``status`` (value checks, then
    the number of uncertified rows) before trusting idx. Also what
    kernels.bench times as "kernels only".
    """
    ts = _triton_module()
    gamma = fp32_gamma(prob.DP)
    dev = prob.c.device
    # Triton launches on the current CUDA device, not the tensors' device: pin it (multi-GPU processes)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        status = ts.new_status(dev)
        if prob.F is None:
            ts.prepare(prob, status, tc=not exact)
        vals, slots, width, q = ts.scan(prob, tc=not exact, **tuning)
        idx, thr, ok = ts.rescore(prob, vals, slots, width, q, status, gamma=gamma,
                                  gamma_ub=GAMMA_UB * gamma,
                                  gamma1=gamma if exact else bf16x3_gamma(prob.DP))
    return idx, thr, ok, status, width, q


def _rescore_progressive(prob, vals, slots, Gs, gamma, gamma_ub):
    """Pass 2 + certify on the torch path.

    Stage A, all rows: recompute only the best slot; rivals in it get the
    per-row bound (cheap, no |F|.|G| products), rivals elsewhere are below
    the 2nd slot maximum. Stage B, the few rows left: all q-1 candidate slots
    with per-code bounds. Returns (idx, rows left for the fallback, their
    lower bounds).
    """
    U = prob.err_unit
    rows = torch.arange(prob.N, device=prob.F.device)
    v, idx, _, c2 = torch_search.rescore_slots(prob, Gs, rows, slots[:, 0], None)
    low = _lower_bound(prob, v, idx, rows, gamma)
    ok = (low > c2.double() + 1.25 * gamma * U) & (low > vals[:, 1].double() + gamma * U)
    active = rows[~ok]
    if active.numel() == 0 or vals.shape[1] < 3:
        return idx, active, low[~ok]
    A = active.numel()
    v = torch.full((A,), float("-inf"), dtype=torch.float32, device=v.device)
    vub, w = torch.full_like(v, float("-inf")), torch.full_like(v, float("-inf"))
    ia = torch.full((A,), torch_search.BIG, dtype=torch.long, device=v.device)
    for p in range(vals.shape[1] - 1):
        cmax, cidx, c1, c2 = torch_search.rescore_slots(prob, Gs, active, slots[active, p], gamma_ub)
        # Same merge as the Triton kernel: a displaced best becomes a rival.
        better = (cmax > v) | ((cmax == v) & (cidx < ia))
        w = torch.where(better, torch.maximum(torch.maximum(w, vub), c2),
                        torch.maximum(w, torch.maximum(c1, c2)))
        v, ia, vub = torch.where(better, cmax, v), torch.where(better, cidx, ia), torch.where(better, c1, vub)
    idx[active] = ia
    low = _lower_bound(prob, v, ia, active, gamma)
    ok = (low > w.double()) & (low > vals[active, -1].double() + gamma * U[active])
    return idx, active[~ok], low[~ok]
