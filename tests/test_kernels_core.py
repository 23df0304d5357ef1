"""kernels/core.py: backend resolution, the certificate's arithmetic and the search's bookkeeping.

tests/test_kernels.py checks end results against the fp64 oracle; these tests pin down the parts of the
core whose mistakes the oracle alone does not see:

* ``_lower_bound`` and ``_rescore_progressive`` are called directly on hand-built problems whose features
  are small dyadic numbers, so every fp32 score and fp32 per-code bound is exact and the expected
  certificate is computed here with ``fractions.Fraction`` from the inequalities documented in core.py.
  Each scenario puts one row exactly on, or just either side of, one inequality.
* ``search`` on real problems: the ``stats`` it records, a row where the fp32 GEMM prefers the wrong
  codeword (the certificate must not trust it, the fallback threshold must keep the true winner), a row
  only the per-code stage can certify, duplicates (never certifiable), N == 0.
* The Triton branch of ``_search`` with the kernels replaced by a stand-in (the real kernels run in the
  interpreter subprocess tests of test_kernels.py): what it does with their outputs.

Calls run under ``torch.device("meta")`` where it matters: every tensor the core makes must follow its
inputs' device, not the process-wide default device.
"""
from __future__ import annotations

import types
from fractions import Fraction as Fr

import pytest
import torch

from kernels import core, torch_search
from kernels.features import CHECK_MESSAGES, Problem, fp32_gamma, gq_problem, vq_problem
from kernels.reference import reference_gq_argmax, reference_nearest_code

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a device object: nothing runs on it

# Hand-built problems: gamma = 2^-4, per-code gamma 1.25 gamma, slack s = 2^-6 (so 2 s = 1/32).
GAMMA = 2.0 ** -4
GAMMA_UB = core.GAMMA_UB * GAMMA
SLACK = 2.0 ** -6


def _f32_exact(x: Fr) -> Fr:
    assert Fr(float(torch.tensor(float(x), dtype=torch.float64).float())) == x, f"{x} is not an fp32 value"
    return x


def cw(score, mag):
    """Codeword features (a, b) for F = (1, 1): fp32 score a + b, per-code error weight |a| + |b|."""
    score, mag = Fr(score), Fr(mag)
    return [float((score + mag) / 2), float((score - mag) / 2)]


FAR = [4.0, -12.0]  # cw(-8, 16): with every other |a| <= 4, |b| <= 12 it sets err_unit U = 16, gamma U = 1


def crafted(F_rows, G_rows, slack=SLACK):
    """A Problem with the given fp32 features; err_unit = sum_i |F_i| max_k |G_ki| as the builders define it."""
    F = torch.tensor(F_rows, dtype=torch.float32)
    G = torch.tensor(G_rows, dtype=torch.float32)
    N, dp = F.shape
    K = G.shape[0]
    U = F.abs().double() @ G.abs().double().amax(dim=0)
    sl = torch.as_tensor(slack, dtype=torch.float64).expand(N).clone()
    return Problem("vq", torch.zeros(N, 1), None, torch.zeros(K, 1), 0.0, {}, dp, G.t().contiguous(),
                   F=F, err_unit=U, slack64=sl)


def slot_major(G_rows, W):
    """(W, T, DP): slot j holds codewords j, j + W, j + 2W, ... (zero rows past K), as Problem.slot_major."""
    G = torch.tensor(G_rows, dtype=torch.float32)
    K, dp = G.shape
    T = -(-K // W)
    G = torch.cat([G, G.new_zeros(T * W - K, dp)])
    return G.view(T, W, dp).transpose(0, 1).contiguous()


def spec_row(f, G, U, s, W, q, g, gub):
    """The documented certificate for one row, exact. -> (winner, needs fallback, lower bound, vals, slots).

    Stage A: best slot only, rivals outside the best slot bounded by the 2nd slot maximum + gamma U,
    rivals inside by their raw score + 1.25 gamma U. Stage B (q >= 3): the q-1 candidate slots with
    per-code bounds raw_j + gamma_ub |F|.|G_j|, everything else below the q-th slot maximum + gamma U.
    Certified iff v - gamma |F|.|G_i| - 2 s beats every bound strictly.
    """
    K = len(G)
    score = [sum(fi * Fr(gi) for fi, gi in zip(f, G[k])) for k in range(K)]
    mag = [sum(abs(fi) * abs(Fr(gi)) for fi, gi in zip(f, G[k])) for k in range(K)]
    for x in score:
        _f32_exact(x)
    members = {j: list(range(j, K, W)) for j in range(min(W, K))}
    smax = {j: max(score[k] for k in m) for j, m in members.items()}
    order = sorted(members, key=lambda j: (-smax[j], j))[:q]
    vals = [smax[j] for j in order] + [None] * (q - len(order))  # None = -inf
    slots = order + [-1] * (q - len(order))

    def above(low, bound):  # low > bound, bound None = -inf
        return bound is None or low > bound

    def winner(cands):
        v = max(score[k] for k in cands)
        return v, min(k for k in cands if score[k] == v)

    v, i = winner(members[order[0]])
    low = v - g * mag[i] - 2 * s
    c2 = max((score[k] for k in members[order[0]] if k != i), default=None)
    ok = (above(low, None if c2 is None else c2 + Fr(5, 4) * g * U)
          and above(low, None if vals[1] is None else vals[1] + g * U))
    if ok or q < 3:
        return i, not ok, low, vals, slots
    cands = [k for j in order[:q - 1] for k in members[j]]
    v, i = winner(cands)
    low = v - g * mag[i] - 2 * s
    w = max((_f32_exact(score[k] + gub * mag[k]) for k in cands if k != i), default=None)
    ok = above(low, w) and above(low, None if vals[q - 1] is None else vals[q - 1] + g * U)
    return i, not ok, low, vals, slots


def run_rescore(F_rows, G_rows, W, q, slack=SLACK):
    """_rescore_progressive on a hand-built problem vs spec_row; returns (idx, bad rows, lows)."""
    prob = crafted(F_rows, G_rows, slack)
    U = [Fr(u) for u in prob.err_unit.tolist()]
    sl = [Fr(x) for x in prob.slack64.tolist()]
    F = [[Fr(x) for x in row] for row in prob.F.tolist()]
    G = prob.Gt.t().tolist()
    specs = [spec_row(F[n], G, U[n], sl[n], W, q, Fr(GAMMA), Fr(GAMMA_UB)) for n in range(len(F))]
    vals = torch.tensor([[float("-inf") if x is None else float(x) for x in sp[3]] for sp in specs],
                        dtype=torch.float32)
    slots = torch.tensor([sp[4] for sp in specs], dtype=torch.long)
    Gs = slot_major(G, W)
    with torch.device("meta"):  # the core's own tensors must follow prob's device, not the default
        idx, bad, low = core._rescore_progressive(prob, vals, slots, Gs, GAMMA, GAMMA_UB)
    assert idx.device == CPU and bad.device == CPU and low.device == CPU
    assert idx.dtype == torch.long and low.dtype == torch.float64
    exp_bad = [n for n, sp in enumerate(specs) if sp[1]]
    assert idx.tolist() == [sp[0] for sp in specs]
    assert bad.tolist() == exp_bad
    assert [Fr(x) for x in low.tolist()] == [specs[n][2] for n in exp_bad]
    return idx.tolist(), exp_bad, low.tolist()


# ---------------------------------------------------------------- _lower_bound
def test_lower_bound_is_score_minus_per_code_error_minus_twice_the_slack():
    F = torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, 1.0], [2.0, 0.0, -4.0]])
    G = torch.tensor([[1.0, 0.5, -2.0], [-3.0, 1.0, 0.25], [0.5, -0.5, 8.0], [2.0, 2.0, 2.0]])
    slack = torch.tensor([2.0 ** -6, 2.0 ** -4, 0.5], dtype=torch.float64)
    prob = Problem("vq", torch.zeros(3, 1), None, torch.zeros(4, 1), 0.0, {}, 3, G.t().contiguous(),
                   F=F, err_unit=torch.ones(3, dtype=torch.float64), slack64=slack)
    gamma = 2.0 ** -3
    for rows in (torch.arange(3), torch.tensor([2, 0])):
        idx = torch.tensor([3, 1, 2])[: rows.numel()]
        v = torch.tensor([5.0, -1.5, 0.75])[: rows.numel()]
        got = core._lower_bound(prob, v, idx, rows, gamma)
        exp = []
        for r, k, vv in zip(rows.tolist(), idx.tolist(), v.tolist()):
            e = Fr(gamma) * sum(abs(Fr(F[r, d].item())) * abs(Fr(G[k, d].item())) for d in range(3))
            exp.append(Fr(vv) - e - 2 * Fr(slack[r].item()))
        assert got.dtype == torch.float64
        assert [Fr(x) for x in got.tolist()] == exp


# ------------------------------------------- stage A alone (q = 2 returns after it)
# K = 4, W = 2: slot 0 = codewords {0, 2}, slot 1 = {1, 3}. Winner: codeword 0, the zero vector (score 0,
# no rounding error), so low = -2 s = -1/32; gamma U = 1 (FAR). Stage A certifies iff
#   low > c2 + 1.25 gamma U  (c2: best other codeword of the winner's slot)  and  low > vals[1] + gamma U.
STAGE_A = {
    # name: (codeword 1, codeword 2 (= c2), codeword 3, needs fallback)
    "certified": (cw(-2, 2), cw(-2, 2), FAR, False),
    "c2_bound_equals_low": (FAR, cw(Fr(-41, 32), Fr(41, 32)), cw(-10, 10), True),  # -41/32 + 5/4 = -1/32
    "c2_within_1.25_gamma_U": (FAR, cw(-1, 1), cw(-10, 10), True),
    "c2_clear_by_0.75_gamma_U": (FAR, cw(-2, 2), cw(-10, 10), False),
    "slot2_bound_equals_low": (cw(Fr(-33, 32), Fr(33, 32)), cw(-4, 4), FAR, True),  # -33/32 + 1 = -1/32
    "slot2_within_gamma_U": (cw(-0.5, 0.5), cw(-4, 4), FAR, True),
    "slot2_clear": (cw(-1.5, 1.5), cw(-4, 4), FAR, False),
}


@pytest.mark.parametrize("name", list(STAGE_A))
def test_stage_a_certificate(name):
    k1, k2, k3, needs_fallback = STAGE_A[name]
    idx, bad, low = run_rescore([[1.0, 1.0]], [[0.0, 0.0], k1, k2, k3], W=2, q=2)
    assert idx == [0]
    assert bad == ([0] if needs_fallback else [])
    assert low == ([-1 / 32] if needs_fallback else [])


# --------------------------------------------- stage B (per-code bounds, q-1 slots)
# K = 8, W = 4: slot j = {j, j + 4}. Codeword 0 = zero vector wins (low = -1/32); the second slot maximum
# is within gamma U = 1, so stage A cannot certify and only the per-code stage can.
def stage_b_codebook(s1=cw(-0.5, 0.5), s2=cw(-0.75, 0.75), s3=cw(-6, 6), winner_at=0):
    G = [[0.0, 0.0], s1, s2, s3, cw(-5, 5), cw(-7, 7), cw(-6.5, 6.5), FAR]
    if winner_at:
        G[0], G[winner_at] = G[winner_at], G[0]
    return G


STAGE_B = {
    # name: (codebook, winner, needs fallback)
    "certified": (stage_b_codebook(), 0, False),
    # the 3rd candidate slot holds a rival whose per-code bound -5/8 + 5/64 * 8.5 > low
    "rival_in_third_candidate_slot": (stage_b_codebook(s2=cw(Fr(-5, 8), Fr(17, 2))), 0, True),
    # raw -1/4 < low, but -1/4 + 5/64 * 4 > low: the per-code bound, not the raw score, decides
    "per_code_bound_above_low": (stage_b_codebook(s1=cw(-0.25, 4)), 0, True),
    "per_code_bound_equals_low": (stage_b_codebook(s1=cw(Fr(-3, 16), 2)), 0, True),  # -3/16 + 5/32 = -1/32
    # 4th slot maximum + gamma U: -1 + 1 > low
    "last_slot_within_gamma_U": (stage_b_codebook(s3=cw(-1, 1)), 0, True),
    "last_slot_bound_equals_low": (stage_b_codebook(s3=cw(Fr(-33, 32), Fr(33, 32))), 0, True),
    # the winner has a higher index than the other candidates: the merge must keep the best score
    "winner_not_lowest_index": (stage_b_codebook(winner_at=2), 2, False),
    # a different codeword with the same fp32 score in the next slot: the lower index stays the winner
    # (its own error term gives low = -1/32), the tie blocks the certificate
    "equal_scores_across_slots": (stage_b_codebook(s1=cw(0, 2)), 0, True),
}


@pytest.mark.parametrize("name", list(STAGE_B))
def test_stage_b_certificate(name):
    G, winner, needs_fallback = STAGE_B[name]
    # Stage A alone cannot certify any of these rows ...
    assert run_rescore([[1.0, 1.0]], G, W=4, q=2)[1] == [0]
    # ... the per-code stage decides.
    idx, bad, low = run_rescore([[1.0, 1.0]], G, W=4, q=4)
    assert idx == [winner]
    assert bad == ([0] if needs_fallback else [])
    assert low == ([-1 / 32] if needs_fallback else [])


def test_stage_b_with_three_slot_maxima():
    # q = 3: two candidate slots, the 3rd slot maximum bounds the rest.
    G = [[0.0, 0.0], cw(-0.5, 0.5), cw(-6, 6), cw(-7, 7), cw(-5, 5), cw(-7.5, 7.5), cw(-6.5, 6.5), FAR]
    assert run_rescore([[1.0, 1.0]], G, W=4, q=2)[1] == [0]
    assert run_rescore([[1.0, 1.0]], G, W=4, q=3)[:2] == ([0], [])
    assert run_rescore([[1.0, 1.0]], G, W=4, q=4)[:2] == ([0], [])


def test_stage_a_with_two_slot_maxima_never_runs_the_per_code_stage():
    # c2 within 1.25 gamma U of low but its per-code bound below: stage B would certify; with q = 2 there
    # is no stage B, the row goes to the fallback.
    G = [[0.0, 0.0], FAR, cw(-1, 1), cw(-10, 10)]
    assert run_rescore([[1.0, 1.0]], G, W=2, q=2)[1] == [0]
    assert run_rescore([[1.0, 1.0]], G, W=2, q=3)[1] == []


def test_rescore_many_rows_matches_the_spec():
    # Random dyadic rows and codewords (exact fp32), a ragged slot layout (K = 10, W = 4), per-row slack.
    g = torch.Generator().manual_seed(4)
    F = (torch.randint(-8, 9, (40, 3), generator=g) / 4).tolist()
    G = (torch.randint(-12, 13, (10, 3), generator=g) / 4).tolist()
    G[7] = [0.25, 0.25, 0.25]
    G[8] = [0.25, 0.25, 0.25]  # a duplicate: rows it wins can never be certified
    slack = (torch.randint(1, 5, (40,), generator=g).double() / 64)
    n_bad = {q: len(run_rescore(F, G, W=4, q=q, slack=slack)[1]) for q in (2, 3, 4)}
    # guards on the inputs: both outcomes occur, and the per-code stage certifies rows stage A cannot
    assert 0 < n_bad[4] < n_bad[2] < 40, n_bad


# ------------------------------------------------------------ search: stats, soundness
def _gq_inputs(N, K, m, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, m, generator=g)
    sigma = torch.exp(torch.empty(N, m).uniform_(-2, 0.5, generator=g))
    return mu, sigma, torch.randn(K, m, generator=g)


def test_search_stats_on_well_separated_rows():
    mu, sigma, cb = _gq_inputs(40, 300, 4, seed=1)
    ref = reference_gq_argmax(mu, sigma, cb, 1.0)
    stats = {}
    with torch.device("meta"):
        got = core.search(gq_problem(mu, sigma, cb, 1.0, defer=True), stats=stats, rows=16, tile=64)
    assert got.device == CPU and torch.equal(got, ref)
    # default backend "auto" -> torch on CPU; random rows are far apart: every row certified
    assert stats == {"backend": "torch", "rows": 40, "fallback_rows": 0, "slot_layout": 64, "candidates": 3}
    stats = {}
    got = core.search(vq_problem(mu, cb), backend="torch", stats=stats)
    assert torch.equal(got, reference_nearest_code(mu, cb))
    assert stats == {"backend": "torch", "rows": 40, "fallback_rows": 0, "slot_layout": 300, "candidates": 3}


def test_search_asks_the_scan_for_one_slot_maximum_more_than_candidates(monkeypatch):
    seen = []
    real = torch_search.scan_torch

    def scan(prob, q, **tuning):  # q required: the core must not rely on the scan's default
        seen.append((q, tuning))
        return real(prob, q, **tuning)

    monkeypatch.setattr(torch_search, "scan_torch", scan)
    mu, sigma, cb = _gq_inputs(8, 50, 2, seed=2)
    stats = {}
    got = core.search(gq_problem(mu, sigma, cb, 0.5), backend="torch", stats=stats, tile=16)
    assert torch.equal(got, reference_gq_argmax(mu, sigma, cb, 0.5))
    assert seen == [(stats["candidates"] + 1, {"tile": 16})] and stats["candidates"] == 3


def test_duplicated_winners_always_go_to_the_fallback():
    mu, sigma, cb = _gq_inputs(12, 40, 3, seed=3)
    dup = torch.cat([cb, cb])
    stats = {}
    got = core.search(gq_problem(mu, sigma, dup, 1.0), backend="torch", stats=stats, tile=16)
    ref = reference_gq_argmax(mu, sigma, dup, 1.0)
    assert torch.equal(got, ref) and (got < 40).all()
    assert stats["fallback_rows"] == 12  # a tie can never be certified


def test_fp32_gemm_preferring_the_wrong_codeword_is_caught():
    # GQ, beta = 0, m = 1: codeword 0 = 0 (fp32 score exactly 0, no rounding error) and c ~ 2 mu, whose
    # direct fp64 score is higher by ~4e-5 but whose fp32 score is -6e-5 in every summation order (with or
    # without FMA): the rounding of the row features a = -1/(2 sigma^2), b = mu/sigma^2 and of c^2
    # outweighs the gap. A certificate using raw rival scores would certify codeword 0; a fallback threshold
    # much above low - gamma * err_unit would drop codeword 1 from the re-rank.
    mu = torch.tensor([[1.4668272733688354]])
    sigma = torch.tensor([[0.09051765501499176]])
    cb = torch.tensor([[0.0], [2.933654308319092]])
    prob = gq_problem(mu, sigma, cb, 0.0)
    fp32 = (prob.F @ prob.Gt)[0]
    assert fp32[0] == 0 and fp32[1] < -1000 * prob.slack64[0], "input no longer exercises the rounding"
    assert reference_gq_argmax(mu, sigma, cb, 0.0).tolist() == [1]
    stats = {}
    assert core.search(prob, backend="torch", stats=stats).tolist() == [1]
    assert stats["fallback_rows"] == 1


def test_rows_only_the_per_code_stage_can_certify():
    # VQ z = 1: codewords 1 and 1 + 2^-8 (fp32 scores 1/2 and 1/2 - 2^-17, exact), -4 makes
    # err_unit 12: the second slot maximum is within gamma * err_unit of the winner, so stage A fails,
    # while the per-code bound of 1 + 2^-8 (~1.25 gamma * 1.5) leaves ~2e-6 of room: certified.
    z = torch.tensor([[1.0]])
    cb = torch.tensor([[1.0], [1.0 + 2.0 ** -8], [-4.0]])
    prob = vq_problem(z, cb)
    gamma = fp32_gamma(prob.DP)
    low = 0.5 - gamma * 1.5 - 2 * prob.slack64[0].item()
    assert (0.5 - 2.0 ** -17) + gamma * prob.err_unit[0].item() > low  # stage A cannot
    stats = {}
    assert core.search(prob, backend="torch", stats=stats).tolist() == [0]
    assert stats["fallback_rows"] == 0


def test_no_rows():
    cb = torch.randn(20, 3)
    for prob in (gq_problem(torch.zeros(0, 3), torch.ones(0, 3), cb, 1.0, defer=True),
                 vq_problem(torch.zeros(0, 3), cb, defer=True)):
        stats = {}
        with torch.device("meta"):
            got = core.search(prob, backend="torch", stats=stats)
        assert got.dtype == torch.long and got.shape == (0,) and got.device == CPU
    bad = cb.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="codebook contains NaN"):
        core.search(gq_problem(torch.zeros(0, 3), torch.ones(0, 3), bad, 1.0, defer=True))


# ------------------------------------------------------------------ resolve_backend
def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError) as e:
        core.resolve_backend("cuda", CPU)
    assert str(e.value) == f"backend must be one of {core.BACKENDS}, got 'cuda'"
    assert core.resolve_backend("torch", CPU) == "torch"
    assert core.resolve_backend("torch", CUDA) == "torch"
    assert core.resolve_backend("auto", CPU) == "torch"
    # auto on CUDA: triton if it imports, else torch
    monkeypatch.setattr(core, "_triton_module", lambda: types.SimpleNamespace())
    assert core.resolve_backend("auto", CUDA) == "triton"
    assert core.resolve_backend("triton", CUDA) == "triton"

    def broken():
        raise ValueError("no triton")

    monkeypatch.setattr(core, "_triton_module", broken)
    assert core.resolve_backend("auto", CUDA) == "torch"
    # triton on CPU tensors needs the interpreter
    with pytest.raises(ValueError) as e:
        core.resolve_backend("triton", CPU)
    assert str(e.value) == ("backend='triton' on cpu tensors needs TRITON_INTERPRET=1 set before "
                            "triton is imported (or CUDA tensors)")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        core.resolve_backend("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert core.resolve_backend("triton", CPU) == "triton"


# ------------------------------------------------- the Triton branch, kernels stood in
class FakeTriton:
    """Stands in for triton_launches: correct indices on certified rows, wrong ones elsewhere."""

    UNCERTIFIED = 5  # status slot after the 5 value checks

    def __init__(self, ref, uncertified, K, checks=(0, 0, 0, 0, 0)):
        self.ref, self.unc, self.K, self.checks = ref, list(uncertified), K, list(checks)
        self.calls = []

    def __call__(self, prob, exact, **tuning):  # no default for exact: the core must pass it
        self.calls.append((prob, exact, tuning))
        N = prob.N
        idx = self.ref.clone()
        ok = torch.ones(N, dtype=torch.int32)
        thr = torch.full((N,), float("inf"), dtype=torch.float64)
        for r in self.unc:
            idx[r] = (self.ref[r] + 1) % self.K
            ok[r] = 0
            thr[r] = float("-inf")  # a valid (if useless) lower bound: every codeword re-ranked
        status = torch.tensor(self.checks + [len(self.unc)], dtype=torch.int32)
        return idx, thr, ok, status, 7, 5


@pytest.fixture
def fake_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(core, "_triton_module", lambda: FakeTriton)

    def install(fake):
        monkeypatch.setattr(core, "triton_launches", fake)
        return fake
    return install


def test_triton_branch_uses_the_kernels_outputs(fake_triton):
    mu, sigma, cb = _gq_inputs(10, 30, 2, seed=5)
    ref = reference_gq_argmax(mu, sigma, cb, 1.0)
    fake = fake_triton(FakeTriton(ref, [1, 4, 9], 30))
    prob = gq_problem(mu, sigma, cb, 1.0)
    stats = {}
    got = core.search(prob, backend="triton", stats=stats, config=(16, 64, 4, 1))
    assert torch.equal(got, ref)  # the uncertified rows were re-ranked, the others kept
    assert len(fake.calls) == 1
    p, exact, tuning = fake.calls[0]
    assert p is prob and exact is True and tuning == {"config": (16, 64, 4, 1)}
    assert stats == {"backend": "triton", "rows": 10, "fallback_rows": 3, "slot_layout": 7, "candidates": 4}
    core.search(prob, backend="triton", exact=False)
    assert fake.calls[1][1] is False and fake.calls[1][2] == {}


def test_triton_branch_all_certified(fake_triton):
    mu, sigma, cb = _gq_inputs(6, 20, 3, seed=6)
    ref = reference_nearest_code(mu, cb)
    fake_triton(FakeTriton(ref, [], 20))
    stats = {}
    got = core.search(vq_problem(mu, cb), backend="triton", stats=stats)
    assert torch.equal(got, ref)
    assert stats == {"backend": "triton", "rows": 6, "fallback_rows": 0, "slot_layout": 7, "candidates": 4}


@pytest.mark.parametrize("kind", ["gq", "vq"])
def test_triton_branch_raises_the_failed_value_check(fake_triton, kind):
    mu, sigma, cb = _gq_inputs(4, 10, 2, seed=7)
    prob = gq_problem(mu, sigma, cb, 1.0) if kind == "gq" else vq_problem(mu, cb)
    fake_triton(FakeTriton(torch.zeros(4, dtype=torch.long), [2], 10, checks=(0, 0, 3, 1, 0)))
    with pytest.raises(ValueError) as e:
        core.search(prob, backend="triton")
    assert str(e.value) == CHECK_MESSAGES[kind][2]
