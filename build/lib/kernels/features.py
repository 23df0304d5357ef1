"""Input validation, GEMM features, error bounds and the direct fp64 scores.

Both searches maximise a score that is a dot product of per-row features
``F`` (N x D) with per-codeword features ``G`` (K x D), up to a per-row
constant:

* GQ:  S_k = -1/2 sum_d (c_kd - mu_d)^2 / sigma_d^2 + beta/2 ||c_k||^2
          = sum_d a_d c_kd^2 + b_d c_kd + const,
       F = [a | b],  a = beta/2 - 1/(2 sigma^2),  b = mu / sigma^2
       G = [c^2 | c]                                              (D = 2m)
* VQ:  -1/2 ||z - c_k||^2 = z . c_k - 1/2 ||c_k||^2 + const,
       F = [z | -1/2],  G = [c | ||c||^2]                         (D = m + 1)

``G`` is stored transposed and zero-padded, ``Gt`` (DP x K) with DP >= D, so a
codebook tile is a contiguous slice along K for both torch and Triton.

Error bound: features are computed in fp64 and rounded once to fp32
(relative error <= u = 2^-24 each), so any fp32 evaluation of the padded dot
product, in any summation order, with or without FMA, satisfies
``|approx_k - S_k| <= gamma * sum_i |F_i| |G_ki| <= gamma * sum_i |F_i| Gmax_i``
with ``gamma ~ (DP + 3) u``. ``Problem.err_unit`` is ``sum_i |F_i| Gmax_i``
(fp64, per row); the searches multiply it by a generous constant.

Row features can be built here with torch ops (``build_rows_torch``: value
checks synced at once) or, on the Triton path, by one kernel
(``triton_search.prepare``) that counts failing rows per check into a small
status tensor the search reads back once. Either way the same checks raise
the same ValueError messages (``CHECK_MESSAGES``).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

U32 = 2.0 ** -24
# Slack for the fp64 direct evaluation itself (its rounding is ~1e-16 relative;
# 2^-40 is a wide margin even for m in the hundreds).
U64_SLACK = 2.0 ** -40
UNDERFLOW_SLACK = 2.0 ** -100  # see _underflow_slack


def padded_dim(d: int, minimum: int = 8) -> int:
    """Feature width padded to a power of two (>= minimum, Triton dot shapes)."""
    p = minimum
    while p < d:
        p *= 2
    return p


def fp32_gamma(dp: int) -> float:
    """Safety-doubled relative bound for an fp32 dot product of length dp."""
    n = dp + 6  # + feature rounding of both operands, + margin
    return 2.0 * n * U32 / (1.0 - n * U32)


def bf16x3_gamma(dp: int) -> float:
    """Bound for the bf16x3 tensor-core product (triton_search.tc_features).

    bf16 keeps 8 significant bits (unit roundoff 2^-8). hi*hi + hi*lo + lo*hi
    misses lo*lo and the rounding of lo: <= 3 * 2^-16 relative per product
    (bf16 products are exact in fp32); the 3*dp fp32 accumulations add
    <= 2^-23 each, even with truncating accumulators. Doubled.
    """
    return 2.0 * (3.03 * 2.0 ** -16 + (3 * dp + 6) * 2.0 ** -23)


# Value checks on the inputs, one status slot each, listed in the order their
# messages take precedence (None: the check does not apply to that kind).
CHECK_X, CHECK_SIGMA, CHECK_CODEBOOK, CHECK_F_OVERFLOW, CHECK_BF16 = range(5)
N_CHECKS = 5
BF16_ROWS_MSG = "row features too large for the bf16 split; use exact=True"
# A row whose sum_i |F_i| max|G_i| reaches this could overflow an fp32 partial sum to inf (a NaN or inf
# score drops out of every max and would certify a wrong winner); below it every partial sum is finite.
SCORE_LIMIT = 2.0 ** 126
CHECK_MESSAGES = {
    "gq": ("mu contains NaN or inf",
           "sigma must be finite and > 0",
           "codebook contains NaN or inf (or c^2 overflows float32)",
           "sigma too small: 1/sigma^2 or mu/sigma^2 (or the scores) overflow float32",
           BF16_ROWS_MSG),
    "vq": ("z contains NaN or inf",
           None,
           "codebook contains NaN or inf (or ||c||^2 overflows float32)",
           "z and the codebook are too large: the scores overflow float32",
           BF16_ROWS_MSG),
}


def raise_failed_check(kind: str, counts) -> None:
    """ValueError for the first check with a nonzero count of failing rows."""
    for msg, n in zip(CHECK_MESSAGES[kind], counts):
        if n and msg:
            raise ValueError(msg)


@dataclass
class Problem:
    """A search instance: argmax_k F[n] . G[k], exactly re-ranked in fp64.

    Gt: (DP, K) fp32 contiguous (G transposed, zero padded).
    F: (N, DP) fp32, unit column stride (rows may be a column slice of a wider
    zero-padded buffer: see row_ops). None until the rows are built, by
    build_rows_torch or triton_search.prepare (``gq_problem(defer=True)``
    leaves that to the search, which picks the builder of its backend).
    err_unit: (N,) fp64, sum_i |F_ni| max_k |G_ki|.
    slack64: (N,) fp64, bound on the fp64 direct evaluation's own error.
    kind: "gq" or "vq" selects the direct fp64 score, evaluated from the raw
    fp32 inputs x (mu or z), s (sigma) and c (codebook).
    """

    kind: str
    x: torch.Tensor            # mu (gq) or z (vq), (N, m) fp32
    s: torch.Tensor | None     # sigma (gq), (N, m) fp32
    c: torch.Tensor            # codebook, (K, m) fp32
    beta: float
    cb: dict                   # cached codebook-side data (CodebookCache entry)
    D: int
    Gt: torch.Tensor
    F: torch.Tensor | None = None
    err_unit: torch.Tensor | None = None
    slack64: torch.Tensor | None = None
    # Row-side Triton scan operands written together with F (zero-padded
    # fp32 rows, bf16x3 splits), so the scan needs no extra torch ops.
    row_ops: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return self.x.shape[0]

    @property
    def K(self) -> int:
        return self.Gt.shape[1]

    @property
    def DP(self) -> int:
        return self.Gt.shape[0]

    def slot_major(self, tile: int) -> torch.Tensor:
        """(tile, T, DP) features with codewords j, j+tile, j+2 tile, ... contiguous.

        Zero rows past K (callers mask them). Cached with the codebook.
        """
        key = ("slot_major", tile)
        if key not in self.cb:
            T = -(-self.K // tile)
            c = self.c
            if T * tile != self.K:
                c = torch.cat([c, c.new_zeros(T * tile - self.K, c.shape[1])])
            self.cb[key] = self.cb["rows"](c.view(T, tile, -1).transpose(0, 1), self.DP).contiguous()
        return self.cb[key]

    def direct_scores(self, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """fp64 direct score of pairs (rows[j], codes[j]) -> (P,) fp64."""
        c = self.c[codes].double()
        if self.kind == "gq":
            return gq_direct(self.x[rows].double(), self.s[rows].double(), c, self.beta)
        return vq_direct(self.x[rows].double(), c)


# ---------------------------------------------------------------- direct fp64
def _seq_sum(t: torch.Tensor) -> torch.Tensor:
    # Fixed left-to-right order over the last dim: the value of a pair must not
    # depend on the shape of the batch it is evaluated in (vectorised torch
    # reductions may reassociate), so oracle and re-rank agree bit for bit.
    acc = t[..., 0].clone()
    for d in range(1, t.shape[-1]):
        acc += t[..., d]
    return acc


def gq_direct(mu: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor, beta: float) -> torch.Tensor:
    """sum_d [beta/2 c_d^2 - 1/2 ((c_d - mu_d)/sigma_d)^2], fp64, broadcasting."""
    q = (c - mu) / sigma
    return _seq_sum((0.5 * beta) * (c * c) - 0.5 * (q * q))


def vq_direct(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """-sum_d (z_d - c_d)^2, fp64, broadcasting (argmax = nearest codeword)."""
    q = z - c
    return -_seq_sum(q * q)


# ------------------------------------------------------------------ validation
def _check_2d_fp32(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got ndim={t.ndim} (shape {tuple(t.shape)})")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")


def validate(named: dict, codebook: torch.Tensor) -> None:
    """Check row inputs (N, m) and the codebook (K, m): one ValueError each."""
    for name, t in list(named.items()) + [("codebook", codebook)]:
        _check_2d_fp32(name, t)
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty (K == 0)")
    if codebook.shape[1] == 0:
        raise ValueError("codebook has zero dimensions (m == 0)")
    m = codebook.shape[1]
    first = None
    for name, t in named.items():
        if t.shape[1] != m:
            raise ValueError(
                f"{name} has {t.shape[1]} dims per row but codebook has m={m} "
                f"({name} shape {tuple(t.shape)}, codebook shape {tuple(codebook.shape)})")
        if first is not None and t.shape != named[first].shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} != {first} shape {tuple(named[first].shape)}")
        first = first or name
    for name, t in named.items():
        if t.device != codebook.device:
            raise ValueError(f"{name} is on {t.device} but codebook is on {codebook.device}")


def _raise_first_failure(kind: str, oks: list) -> None:
    # One device sync for all checks (CHECK_MESSAGES order, None = n/a), then
    # a message naming the bad input.
    present = [ok for ok in oks if ok is not None]
    flags = iter(torch.stack([ok.reshape(()) for ok in present]).cpu().tolist())
    raise_failed_check(kind, [ok is not None and not next(flags) for ok in oks])


def _underflow_slack(F: torch.Tensor, gmax: torch.Tensor) -> torch.Tensor:
    # The relative bounds ignore underflow: products or bf16 split parts below
    # ~2^-117 lose their relative accuracy. Their absolute effect is tiny.
    return UNDERFLOW_SLACK * (1.0 + F.abs().double().sum(dim=1) + gmax.sum())


# -------------------------------------------------------------------- builders
def _codebook_side(cols: list[torch.Tensor], dp: int):
    """Gt (dp, K) from fp32 feature columns (each (K, w)), zero padded; gmax (dp,) fp64."""
    K = cols[0].shape[0]
    Gt = torch.zeros(dp, K, dtype=torch.float32, device=cols[0].device)
    i = 0
    for col in cols:
        Gt[i:i + col.shape[1]] = col.t()
        i += col.shape[1]
    # Max over the fp32 values actually used (they include the rounding).
    gmax = Gt.abs().amax(dim=1).double()
    return Gt, gmax


def gq_codebook_rows(c: torch.Tensor, dp: int) -> torch.Tensor:
    """GQ codeword features [c^2 | c | 0] for rows c (..., m) -> (..., dp) fp32.

    c*c in fp32 is the correctly rounded square (the exact product of two
    fp32 values fits in fp64's mantissa), so no fp64 detour is needed.
    """
    m = c.shape[-1]
    return torch.cat([c * c, c, c.new_zeros(*c.shape[:-1], dp - 2 * m)], dim=-1)


def vq_codebook_rows(c: torch.Tensor, dp: int) -> torch.Tensor:
    """VQ codeword features [c | ||c||^2 | 0] (norm summed in fp64, rounded once)."""
    m = c.shape[-1]
    sq = (c.double() ** 2).sum(dim=-1, keepdim=True).float()
    return torch.cat([c, sq, c.new_zeros(*c.shape[:-1], dp - m - 1)], dim=-1)


class CodebookCache:
    """Codebook-side features, reused while the same codebook tensor is unchanged.

    Keyed on the tensor object (held by weakref, so a freed codebook can never
    alias a new one at the same address) and its version counter (bumped by
    any in-place write, also through views).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list = []

    def get(self, kind: str, codebook: torch.Tensor, dp: int) -> dict:
        for ref, key, ent in self.entries:
            if ref() is codebook and key == (kind, dp, codebook._version):
                return ent
        rows = gq_codebook_rows if kind == "gq" else vq_codebook_rows
        # computed from a detached view (no autograd graph for a codebook that is a trainable parameter),
        # but keyed on the caller's tensor, whose identity and version are stable across calls
        Gt, gmax = _codebook_side([rows(codebook.detach(), dp)], dp)
        ent = {"Gt": Gt, "gmax": gmax, "cabs": codebook.detach().abs().amax(dim=0).double(),
               "rows": rows}
        self.entries = [(weakref.ref(codebook), (kind, dp, codebook._version), ent)] + \
            self.entries[: self.size - 1]
        return ent


CODEBOOKS = CodebookCache()


def gq_problem(mu, sigma, codebook, beta: float, *, defer: bool = False) -> Problem:
    """GQ instance. Shape/dtype/device checks now; value checks when the rows
    are built (now, with torch ops, unless ``defer``)."""
    validate({"mu": mu, "sigma": sigma}, codebook)
    beta = float(beta)
    if not (beta == beta and abs(beta) != float("inf")):
        raise ValueError(f"beta must be finite, got {beta}")
    m = codebook.shape[1]
    dp = padded_dim(2 * m)
    cb = CODEBOOKS.get("gq", codebook, dp)
    prob = Problem("gq", mu.detach(), sigma.detach(), codebook.detach(), beta, cb, 2 * m, cb["Gt"])
    if not defer:
        build_rows_torch(prob)
    return prob


def vq_problem(z, codebook, *, defer: bool = False) -> Problem:
    """VQ instance; see gq_problem."""
    validate({"z": z}, codebook)
    m = codebook.shape[1]
    cb = CODEBOOKS.get("vq", codebook, padded_dim(m + 1))
    prob = Problem("vq", z.detach(), None, codebook.detach(), 0.0, cb, m + 1, cb["Gt"])
    if not defer:
        build_rows_torch(prob)
    return prob


def build_rows_torch(prob: Problem) -> None:
    """Row features F, err_unit and slack64 with torch ops; raises on bad values."""
    m, dp, beta = prob.c.shape[1], prob.DP, prob.beta
    gmax, cabs = prob.cb["gmax"], prob.cb["cabs"]
    x = prob.x
    F = torch.zeros(x.shape[0], dp, dtype=torch.float32, device=x.device)
    x64 = x.double()
    if prob.kind == "gq":
        # Row features in fp64, rounded once. c*c in fp32 is already the correctly
        # rounded square (the exact product of two fp32 fits in fp64's mantissa).
        sigma = prob.s
        s64 = sigma.double()
        inv = 1.0 / (s64 * s64)
        F[:, :m] = 0.5 * beta - 0.5 * inv
        F[:, m:2 * m] = x64 * inv
        err_unit = F.abs().double() @ gmax
        _raise_first_failure("gq", [
            torch.isfinite(x).all(),
            (torch.isfinite(sigma) & (sigma > 0)).all(),
            torch.isfinite(gmax).all(),
            torch.isfinite(F).all() & (err_unit < SCORE_LIMIT).all(),
            None,
        ])
        slack = U64_SLACK * (((cabs + x64.abs()) ** 2) * inv + abs(beta) * cabs * cabs).sum(dim=1)
    else:
        F[:, :m] = x
        F[:, m] = -0.5
        err_unit = F.abs().double() @ gmax
        _raise_first_failure("vq", [torch.isfinite(x).all(), None, torch.isfinite(gmax).all(),
                                    (err_unit < SCORE_LIMIT).all(), None])
        # The direct score is -||z-c||^2 = 2 S - const: twice the GEMM scale.
        slack = U64_SLACK * ((cabs + x64.abs()) ** 2).sum(dim=1)
    slack += _underflow_slack(F, gmax)
    prob.F, prob.err_unit, prob.slack64 = F, err_unit, slack


@contextmanager
def ieee_fp32_matmul():
    """Force IEEE fp32 torch matmuls (no TF32/bf16 shortcuts) inside the block.

    The error bounds assume fp32 products; a user's global
    ``set_float32_matmul_precision('high')`` would silently break them.
    """
    saved = torch.get_float32_matmul_precision()
    if saved == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
