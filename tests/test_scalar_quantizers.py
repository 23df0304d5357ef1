"""FSQ, LFQ and BSQ (quantizers/fsq.py, lfq.py, bsq.py): levels, index conventions, entropies, losses."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers import build_quantizer
from quantizers._utils import channels_to_groups
from quantizers.lfq import sign_codes


def one_group(values):
    """(N, d) values -> (1, d, N, 1) input for a single-group quantizer (channel d = dim d)."""
    v = torch.as_tensor(values, dtype=torch.float32)
    return v.t().reshape(1, v.shape[1], v.shape[0], 1)


# ---------------------------------------------------------------------------------------------- FSQ

@pytest.mark.parametrize("size, levels, bits", [(256, [8, 6, 5], 7.91), (1024, [8, 5, 5, 5], 9.97),
                                                (4096, [7, 5, 5, 5, 5], 12.10), (65536, [8, 8, 8, 5, 5, 5], 15.97)])
def test_fsq_recommended_levels_and_their_real_bits(size, levels, bits):
    q = build_quantizer("fsq", codebook_size=size, num_codebooks=2)
    assert list(q.levels) == levels and q.codebook_size == math.prod(levels)
    assert q.bits_per_token == pytest.approx(2 * bits, abs=0.01)


@pytest.mark.parametrize("levels", [[8, 5, 3], [3, 4], [7]])
def test_fsq_reaches_every_level_and_every_index_once(levels):
    q = build_quantizer("fsq", codebook_size=None, levels=levels).eval()
    d = len(levels)
    axis = torch.linspace(-4, 4, 81)  # finer than the narrowest level region (~0.29 wide)
    grid = torch.cartesian_prod(*[axis] * d).reshape(-1, d) if d > 1 else axis[:, None]
    idx = q.encode(one_group(grid)).flatten()
    assert sorted(idx.unique().tolist()) == list(range(math.prod(levels)))
    codes = channels_to_groups(q.decode(idx.view(1, 1, -1, 1)), 1).reshape(-1, d)
    for i, L in enumerate(levels):  # normalised values: (level − ⌊L/2⌋) / ⌊L/2⌋
        expected = [(j - L // 2) / (L // 2) for j in range(L)]
        assert sorted(codes[:, i].unique().tolist()) == pytest.approx(expected)


def test_fsq_index_is_mixed_radix_with_dim_0_least_significant():
    q = build_quantizer("fsq", codebook_size=None, levels=[5, 3]).eval()
    # big inputs saturate to the top level (2 and 1); −big to the bottom (−2 and −1)
    idx = q.encode(one_group([[9.0, -9.0], [-9.0, 9.0], [0.0, 0.0]])).flatten().tolist()
    assert idx == [4 + 0 * 5, 0 + 2 * 5, 2 + 1 * 5]


def test_fsq_straight_through_gradient_is_the_bound_derivative():
    q = build_quantizer("fsq", codebook_size=None, levels=[8, 5]).train()
    h = torch.randn(1, 2, 6, 1, requires_grad=True)
    q(h).z_q.sum().backward()
    z = h.detach().double()
    L = torch.tensor([8.0, 5.0], dtype=torch.float64).view(1, 2, 1, 1)
    half, off = (L - 1) * (1 - 1e-3) / 2, torch.where(L % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(off / half)
    expected = (1 - torch.tanh(z + shift) ** 2) * half / torch.div(L, 2, rounding_mode="floor")
    assert torch.allclose(h.grad.double(), expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(codebook_size=100), "no recommended levels for codebook_size=100"),
    (dict(codebook_size=256, levels=[8, 5, 5, 5]), "does not match levels"),
    (dict(codebook_size=None, levels=[8, 5], codebook_dim=3), "codebook_dim=3 must equal len"),
    (dict(codebook_size=None, levels=[8, 2]), "integers >= 3"),
])
def test_fsq_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_quantizer("fsq", **kwargs)


# ---------------------------------------------------------------------------------------------- LFQ / BSQ

def brute_entropies(rows, scale, tau, group):
    """H_s and sub-grouped H_c (nats) from explicit softmaxes over all 2^k (and 2^g) codes."""
    k = rows.shape[1]
    logits = 2 * rows.double() @ (sign_codes(k).double() * scale).t() / tau
    p = torch.softmax(logits, -1)
    h_s = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean()
    h_c = 0.0
    for s in range(0, k, group):
        pg = torch.softmax(2 * rows[:, s:s + group].double() @ (sign_codes(group).double() * scale).t() / tau, -1)
        m = pg.mean(0)
        h_c += -(m * torch.log(m.clamp_min(1e-300))).sum()
    return h_s, h_c


def test_lfq_index_is_msb_first_and_zero_maps_to_minus_one():
    q = build_quantizer("lfq", codebook_size=16).eval()
    out = q(one_group([[0.3, -2.0, 0.0, 5.0], [1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, 1.0, 1.0]]))
    assert out.indices.flatten().tolist() == [0b1001, 0b1000, 0b0011]
    assert channels_to_groups(out.z_q, 1).reshape(-1, 4).tolist() == [[1, -1, -1, 1], [1, -1, -1, -1], [-1, -1, 1, 1]]


@pytest.mark.parametrize("name, kwargs", [("fsq", dict(codebook_size=None, levels=[7, 4, 3])),
                                          ("lfq", dict(codebook_size=32)), ("bsq", dict(codebook_size=32))])
def test_eval_codes_match_the_formula_and_decode_then_encode_returns_the_indices(name, kwargs):
    torch.manual_seed(0)
    q = build_quantizer(name, num_codebooks=2, **kwargs).eval()
    h = torch.randn(3, q.in_channels, 4, 4) * 2
    z = channels_to_groups(h, 2)
    if name == "fsq":
        L = torch.tensor([7.0, 4.0, 3.0])
        half, off = (L - 1) * (1 - 1e-3) / 2, torch.where(L % 2 == 0, 0.5, 0.0)
        expected = torch.round(torch.tanh(z + torch.atanh(off / half)) * half - off) / torch.floor(L / 2)
    else:
        scale = 1 / math.sqrt(10) if name == "bsq" else 1.0  # BSQ: one sphere over the token's 2 x 5 bits
        expected = torch.where(z > 0, scale, -scale)
    assert torch.allclose(channels_to_groups(q(h).z_q, 2), expected, atol=1e-6)
    idx = torch.randint(q.codebook_size, (2, 2, 3, 3))
    if name == "fsq":  # decode's codes are normalised levels: back to levels, then the index formula
        levels = torch.round(channels_to_groups(q.decode(idx), 2) * torch.tensor([3.0, 2.0, 1.0]))
        assert torch.equal(q._index(levels), idx)
    else:  # a sign code is its own pre-image
        assert torch.equal(q.encode(q.decode(idx)), idx)


def test_codebook_entropy_is_per_group_so_groups_splitting_the_codes_are_penalised():
    torch.manual_seed(0)
    q = build_quantizer("lfq", codebook_size=16, num_codebooks=2, temperature=0.3)
    z = torch.randn(200, 2, 4) * 0.5
    _, h_c = q.entropies(z)
    per_group = [brute_entropies(z[:, j], 1.0, 0.3, 4)[1] for j in range(2)]
    assert h_c.item() == pytest.approx(sum(per_group).item() / 2, rel=1e-5)
    split = z.clone()
    split[:, 0, 0], split[:, 1, 0] = split[:, 0, 0].abs() + 1, -split[:, 1, 0].abs() - 1  # first bit fixed per group
    assert q.entropies(split)[1] < h_c - 0.5  # each group loses about one bit (ln 2 nats)


@pytest.mark.parametrize("name, group", [("lfq", 6), ("lfq", 3), ("lfq", 1), ("bsq", 2)])
def test_entropies_equal_the_explicit_softmax_over_all_codes(name, group):
    torch.manual_seed(0)
    q = build_quantizer(name, codebook_size=64, entropy_group_size=group, temperature=0.5)
    rows = torch.randn(40, 6) * 0.3
    if name == "bsq":
        rows = torch.nn.functional.normalize(rows, dim=-1)
    h_s, h_c = q.entropies(rows[:, None, :])  # one group
    want_s, want_c = brute_entropies(rows, q.scale, 0.5, group)
    assert h_s.item() == pytest.approx(want_s.item(), rel=1e-5)
    assert h_c.item() == pytest.approx(want_c.item(), rel=1e-5)


def test_lfq_loss_is_commitment_plus_weighted_entropies_with_the_sum_convention():
    torch.manual_seed(0)
    kw = dict(codebook_size=16, num_codebooks=2, commitment_weight=0.25, entropy_weight=0.1, temperature=0.3)
    h = torch.randn(3, 8, 2, 5)
    summed = build_quantizer("lfq", reduction="sum", **kw).train()(h)
    mean = build_quantizer("lfq", reduction="mean", **kw).train()(h)
    z = channels_to_groups(h, 2)
    commit = (z - torch.where(z > 0, 1.0, -1.0)).square()
    assert summed.stats["commitment"] == pytest.approx(commit.sum().item() / 3, rel=1e-5)
    assert mean.stats["commitment"] == pytest.approx(commit.mean().item(), rel=1e-5)
    h_s, h_c = float(summed.stats["sample_entropy"]), float(summed.stats["codebook_entropy"])
    tokens = 2 * 2 * 5  # groups x positions per image
    assert summed.loss.item() == pytest.approx(0.25 * commit.sum().item() / 3 + 0.1 * tokens * (h_s - h_c), rel=1e-5)
    assert mean.loss.item() == pytest.approx(0.25 * commit.mean().item() + 0.1 * (h_s - h_c), rel=1e-5)


def test_entropy_ramp_decays_over_training_forwards_and_is_checkpointed():
    torch.manual_seed(0)
    q = build_quantizer("lfq", codebook_size=16, commitment_weight=0.0, entropy_ramp=3.0, entropy_ramp_steps=4).train()
    h = torch.randn(2, 4, 3, 3)
    losses = [q(h).loss.item() for _ in range(6)]
    assert losses[0] == pytest.approx(4 * losses[5], rel=1e-5)
    assert losses[2] == pytest.approx(2.5 * losses[5], rel=1e-5)  # 1 + 3 (1 − 2/4)
    assert losses[4] == pytest.approx(losses[5], rel=1e-6)
    assert int(q.state_dict()["train_steps"]) == 6


def test_lfq_straight_through_gradient_is_identity():
    q = build_quantizer("lfq", codebook_size=16, commitment_weight=0.0, entropy_weight=0.0).train()
    h = torch.randn(2, 4, 3, 3, requires_grad=True)
    q(h).z_q.mul(3.0).sum().backward()
    assert torch.equal(h.grad, torch.full_like(h, 3.0))


@pytest.mark.parametrize("sphere, dims", [("token", 16), ("group", 8)])
def test_bsq_codes_lie_on_the_sphere_and_the_error_is_bounded(sphere, dims):
    torch.manual_seed(0)
    q = build_quantizer("bsq", codebook_size=256, num_codebooks=2, sphere=sphere).eval()
    assert q.commitment_weight == 0.0 and q.scale == 1 / math.sqrt(dims)
    h = torch.randn(4, 16, 3, 3) * torch.rand(4, 16, 3, 3) * 10
    out = q(h)
    codes = channels_to_groups(out.z_q, 2)  # (B, G, H, W, k)
    norms = codes.square().sum((1, -1)).sqrt() if sphere == "token" else codes.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    z = channels_to_groups(h, 2)
    u = z / z.square().sum((1, -1), keepdim=True).sqrt() if sphere == "token" else torch.nn.functional.normalize(z, dim=-1)
    err = (u - codes).square().sum((1, -1) if sphere == "token" else -1)
    assert (err <= 2 - 2 / math.sqrt(dims) + 1e-6).all()
    assert torch.equal(q.encode(h * 7.5), out.indices)  # on the sphere: the input scale does not matter


def test_bsq_straight_through_gradient_is_one_over_sqrt_l_as_the_official_code():
    # official BSQ: zq = (u + sg(sign(u) - u)) * q_scale, q_scale = 1/sqrt(L): gradient 1/sqrt(L) w.r.t. u
    torch.manual_seed(0)
    kw = dict(codebook_size=16, num_codebooks=4, entropy_weight=0.0)  # L = 16 on one sphere
    h = torch.randn(2, 16, 3, 3)
    g = torch.randn_like(h)
    grads = {}
    for scaled in (True, False):
        u = torch.nn.functional.normalize(h, dim=1).requires_grad_()  # already on the sphere: d u / d h is not tested
        q = build_quantizer("bsq", straight_through_scale=scaled, **kw).train()
        z_q = q(u).z_q
        assert torch.allclose(z_q, torch.where(u > 0, 0.25, -0.25))  # the value is the code either way
        grads[scaled] = torch.autograd.grad((z_q * g).sum(), u)[0]
    # through the normalisation both get the same projection; the official one is 1/√16 = 0.25 of ours before
    assert torch.allclose(grads[True], 0.25 * grads[False], atol=1e-7)


def test_bsq_codebook_entropy_is_per_bit_by_default_and_sums_over_the_token():
    # official analytical BSQ: p(bit_i = +) = σ(4 u_i / (√L τ)); H_c = Σ_i H(batch mean of p_i); H_s = Σ_i mean H(p_i)
    torch.manual_seed(0)
    q = build_quantizer("bsq", codebook_size=16, num_codebooks=2, temperature=0.5)
    assert q.entropy_group_size == 1
    u = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    p = torch.sigmoid(4 * u / (math.sqrt(8) * 0.5))
    binary = lambda p: -(p * p.log() + (1 - p) * (1 - p).log())
    h_s, h_c = q.entropies(u.view(50, 2, 4))
    assert h_s.item() == pytest.approx(binary(p).sum(-1).mean().item(), rel=1e-5)
    assert h_c.item() == pytest.approx(binary(p.mean(0)).sum().item(), rel=1e-5)


def test_bsq_rejects_a_code_scale():
    with pytest.raises(ValueError, match="scale=2"):
        build_quantizer("bsq", codebook_size=16, scale=2)


def test_default_entropy_group_divides_every_code_width():
    assert build_quantizer("lfq", codebook_size=2 ** 18).entropy_group_size == 9
    assert build_quantizer("lfq", codebook_size=2 ** 16).entropy_group_size == 8
    assert build_quantizer("lfq", codebook_size=2 ** 10).entropy_group_size == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(codebook_size=16, codebook_dim=3), "codebook_dim=3 must equal log2"),
    (dict(codebook_size=64, entropy_group_size=4), "entropy_group_size=4 must divide"),
    (dict(codebook_size=16, temperature=0.0), "temperature=0.0"),
    (dict(codebook_size=16, sample_weight=-1.0), "sample_weight=-1.0"),
])
def test_lfq_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_quantizer("lfq", **kwargs)


@pytest.mark.parametrize("name, kwargs", [("fsq", dict(codebook_size=None, levels=[5, 3])), ("lfq", dict(codebook_size=4))])
def test_non_finite_inputs_are_refused(name, kwargs):
    q = build_quantizer(name, **kwargs)
    h = torch.zeros(1, 2, 2, 2)
    h[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        q(h)


def test_entropy_ramp_multiplies_the_entropy_weight():
    torch.manual_seed(0)
    q = build_quantizer("lfq", codebook_size=16, commitment_weight=0.0, entropy_weight=0.3, entropy_ramp=3.0,
                        entropy_ramp_steps=4, reduction="mean").train()
    h = torch.randn(2, 4, 3, 3)
    for ramp in (4.0, 3.25, 2.5):  # 1 + 3 (1 − s/4) at training forwards s = 0, 1, 2
        out = q(h)
        h_s, h_c = float(out.stats["sample_entropy"]), float(out.stats["codebook_entropy"])
        assert out.loss.item() == pytest.approx(ramp * 0.3 * (h_s - h_c), rel=1e-5)


def test_fsq_levels_per_dim_splits_the_bits_into_equal_power_of_two_levels():
    assert build_quantizer("fsq", codebook_size=2**16, levels_per_dim=16).levels == (16, 16, 16, 16)
    assert build_quantizer("fsq", codebook_size=2**8, levels_per_dim=4).levels == (4, 4, 4, 4)
    with pytest.raises(ValueError, match=r"codebook_size=1024 is not a power of 16 \(levels_per_dim=16"):
        build_quantizer("fsq", codebook_size=1024, levels_per_dim=16)
    with pytest.raises(ValueError, match=r"levels_per_dim=6 must be a power of 2 from 4 to 256"):
        build_quantizer("fsq", codebook_size=2**16, levels_per_dim=6)
