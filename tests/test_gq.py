"""GQ + TDC: codebook, selection, layout, the eval-mode invariant, the controller and the option errors."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers import build_quantizer, known_quantizers
from quantizers._utils import channels_to_groups, groups_to_channels
from quantizers.gq import gaussian_codebook
from quantizers.tdc import TargetDivergenceConstraint, gaussian_kl_bits


# ---- codebook -----------------------------------------------------------------------------------

def test_codebook_is_deterministic_seeded_gaussian_and_not_stored():
    a = gaussian_codebook(4096, 4, seed=42)
    assert torch.equal(a, gaussian_codebook(4096, 4, seed=42))
    assert not torch.equal(a, gaussian_codebook(4096, 4, seed=43))
    assert a.dtype == torch.float32 and a.shape == (4096, 4) and torch.isfinite(a).all()
    assert a.mean(0).abs().max() < 0.02 and (a.var(0) - 1).abs().max() < 0.05
    # Sobol stratification: every marginal hits each of K equal-probability bins exactly once
    bins = torch.special.ndtr(a.double()).mul(4096).floor().long()
    for d in range(4):
        assert torch.equal(bins[:, d].sort().values, torch.arange(4096))

    q = build_quantizer("gq", codebook_size=256, codebook_dim=4)
    assert torch.equal(q.codebook, gaussian_codebook(256, 4, seed=42))
    assert "codebook" not in q.state_dict()  # regenerated from the seed, never checkpointed


# ---- selection ----------------------------------------------------------------------------------

def brute_force_gq(mu, sigma, codebook, beta):
    """argmax_k Σ_d log N(c_kd; μ_d, σ_d²) − β log N(c_kd; 0, 1), in float64, full formula with constants."""
    mu, sigma, c = mu.double()[:, None, :], sigma.double()[:, None, :], codebook.double()[None]
    log_q = -0.5 * ((c - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)
    log_p = -0.5 * c**2 - 0.5 * math.log(2 * math.pi)
    return (log_q - beta * log_p).sum(-1).argmax(-1)


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("m,groups", [(1, 3), (4, 2), (8, 1)])
def test_selection_matches_brute_force_including_extreme_sigma(m, groups, beta):
    g = torch.Generator().manual_seed(m * 10 + groups)
    q = build_quantizer("gq", codebook_size=512, codebook_dim=m, num_codebooks=groups, beta=beta).eval()
    b, hw = 3, 4
    mu = torch.randn(b, m * groups, hw, hw, generator=g) * 1.5
    # log-variances from tiny (σ ≈ 1e-4) to huge (σ ≈ 1e3), and the clamp limits themselves
    logvar = torch.empty(b, m * groups, hw, hw).uniform_(-18.0, 14.0, generator=g)
    logvar[0, :, 0, 0] = -40.0
    logvar[1, :, 0, 0] = 30.0
    h = torch.cat([mu, logvar], 1)
    got = q.encode(h)

    sigma = (0.5 * logvar.clamp(-30, 20)).exp()
    rows_mu = channels_to_groups(mu, groups).reshape(-1, m)
    rows_sigma = channels_to_groups(sigma, groups).reshape(-1, m)
    want = brute_force_gq(rows_mu, rows_sigma, q.codebook, beta).view(b, groups, hw, hw)
    assert got.dtype == torch.int64 and got.shape == (b, groups, hw, hw)
    assert torch.equal(got, want)


def test_ties_pick_the_lowest_index():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2).eval()
    q.codebook[5] = q.codebook[9] = torch.tensor([0.3, -0.2])  # duplicate codewords: identical scores
    h = torch.tensor([0.3, -0.2, -8.0, -8.0]).view(1, 4, 1, 1)  # μ on the duplicate, small σ
    assert q.encode(h).item() == 5


def test_strided_channel_layout_round_trips_and_matches_reference_map():
    x = torch.arange(2 * 12 * 3 * 3).float().view(2, 12, 3, 3)
    g = channels_to_groups(x, 3)  # 3 groups of 4 dims
    assert g.shape == (2, 3, 3, 3, 4)
    # channel c = d * num_groups + j holds dim d of group j
    assert torch.equal(g[:, 1, :, :, 2], x[:, 2 * 3 + 1])
    assert torch.equal(groups_to_channels(g), x)


def test_eval_decode_of_encode_equals_forward_and_train_path_is_a_sample():
    torch.manual_seed(0)
    q = build_quantizer("gq", codebook_size=64, codebook_dim=3, num_codebooks=2)
    h = torch.randn(2, q.in_channels, 5, 5)
    q.eval()
    out = q(h)
    assert torch.equal(q.decode(q.encode(h)), out.z_q)
    assert out.indices.shape == (2, 2, 5, 5) and out.indices.dtype == torch.int64
    assert out.continuous is not None and out.continuous.shape == out.z_q.shape
    # every z_q vector is a codeword
    rows = channels_to_groups(out.z_q, 2).reshape(-1, 3)
    assert torch.equal(rows, q.codebook[out.indices.reshape(-1)])

    q.train()
    torch.manual_seed(1)
    out_t = q(h)
    assert out_t.indices is None
    mu, logvar = h.chunk(2, 1)
    torch.manual_seed(1)
    expected = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    assert torch.allclose(out_t.z_q, expected)


def test_group_kl_uses_the_strided_channel_map():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=3).eval()
    mu = torch.zeros(1, 6, 2, 2)
    mu[:, 1 * 3 + 2] = 4.0  # channel d*G + j with d=1, j=2: dim 1 of group 2 carries 8 nats
    out = q(torch.cat([mu, torch.zeros_like(mu)], 1))
    assert out.stats["bits_mean/0"] == 0 and out.stats["bits_mean/1"] == 0
    assert math.isclose(out.stats["bits_mean/2"], 8 / math.log(2), rel_tol=1e-6)


def test_kl_in_bits_matches_closed_form():
    mu, logvar = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, math.log(0.25)])
    nats = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    assert torch.allclose(gaussian_kl_bits(mu, logvar), nats / math.log(2))
    assert gaussian_kl_bits(torch.zeros(1), torch.zeros(1)).item() == 0.0


# ---- TDC ----------------------------------------------------------------------------------------

def test_tdc_weights_below_inside_and_above_the_band():
    tdc = TargetDivergenceConstraint(target_bits=8, tolerance=0.5)
    tdc.lam_min.fill_(0.25)
    tdc.lam_max.fill_(4.0)
    bits = torch.tensor([[7.0, 7.5, 8.0, 8.5, 9.0]])
    assert torch.equal(tdc.weights(bits), torch.tensor([[0.25, 1.0, 1.0, 1.0, 4.0]]))
    tdc.eval()  # no controller update
    tdc.lam.fill_(2.0)
    loss, stats = tdc(bits)
    assert math.isclose(loss.item(), 2.0 * (0.25 * 7 + 7.5 + 8 + 8.5 + 4 * 9), rel_tol=1e-6)
    assert stats["bits_min"] == 7.0 and stats["bits_max"] == 9.0 and math.isclose(stats["bits_mean"], 8.0)
    assert math.isclose(stats["bits_in_band"], 3 / 5, rel_tol=1e-6)
    assert stats["bits_mean/0"] == 7.0 and stats["bits_mean/4"] == 9.0  # (B, G) input: one mean per group
    assert tdc.lam.item() == 2.0  # eval mode leaves the controller alone


def test_tdc_controller_moves_each_lambda_toward_the_band_and_clamps():
    f = 1.01
    tdc = TargetDivergenceConstraint(target_bits=8, tolerance=0.5, lam_factor=f, updates_per_step=1)
    tdc(torch.full((4, 3), 12.0))  # everything above the band
    assert math.isclose(tdc.lam.item(), f) and math.isclose(tdc.lam_max.item(), f)
    assert math.isclose(tdc.lam_min.item(), 1.0)  # ×f then clamped to its upper limit 1
    tdc(torch.full((4, 3), 2.0))  # everything below
    assert math.isclose(tdc.lam.item(), 1.0) and math.isclose(tdc.lam_max.item(), 1.0)
    assert math.isclose(tdc.lam_min.item(), 1 / f)
    for _ in range(2000):
        tdc(torch.full((1, 1), 2.0))
    assert math.isclose(tdc.lam_min.item(), 1e-3) and tdc.lam.item() < 1e-8  # λ_min clamped, λ not
    assert set(tdc.state_dict()) == {"lam", "lam_min", "lam_max"}  # checkpointed


def test_tdc_lambda_max_is_clamped_and_lambda_follows_f_to_the_power_of_steps():
    f, steps = 1.01, 800  # 1.01^800 ≈ 2868 > 1e3: the clamp is reached after 695 steps
    tdc = TargetDivergenceConstraint(target_bits=4, tolerance=0.5, lam_factor=f, lam_max_range=(1.0, 1e3), updates_per_step=1)
    for _ in range(steps):
        tdc(torch.full((2, 3), 9.0))
    assert tdc.lam_max.item() == 1e3
    assert math.isclose(tdc.lam.item(), f**steps, rel_tol=1e-9)  # λ itself is never clamped
    for _ in range(5):  # back inside the band: λ_max decays from the clamp by exactly f per step
        tdc(torch.full((2, 3), 4.0))
    assert math.isclose(tdc.lam_max.item(), 1e3 / f**5, rel_tol=1e-12)
    assert tdc.lam_min.item() == 1.0  # never below the band: λ_min stayed at its upper clamp


def test_tdc_controller_reads_mean_min_max_of_the_batch():
    tdc = TargetDivergenceConstraint(target_bits=8, tolerance=0.5, updates_per_step=1)
    # mean 7.97 (not above T), max on the band edge (inside), min below it: λ down, λ_max down (clamped at 1), λ_min down
    tdc(torch.tensor([[7.0, 8.4, 8.5]]))
    assert math.isclose(tdc.lam.item(), 1 / 1.01) and tdc.lam_max.item() == 1.0
    assert math.isclose(tdc.lam_min.item(), 1 / 1.01)
    tdc = TargetDivergenceConstraint(target_bits=8, tolerance=0.5, updates_per_step=1)
    tdc(torch.tensor([[7.6, 8.1, 8.51]]))  # mean above T, max just above the band, min inside
    assert math.isclose(tdc.lam.item(), 1.01) and math.isclose(tdc.lam_max.item(), 1.01)
    assert tdc.lam_min.item() == 1.0


def test_tdc_moves_twice_per_training_forward_by_default_as_the_reference_per_autoencoder_step():
    # the reference alternates optimizers by batch and updates on every forward: 2 moves per autoencoder update
    tdc = TargetDivergenceConstraint(target_bits=8, tolerance=0.5)
    tdc(torch.full((4, 3), 12.0))
    assert math.isclose(tdc.lam.item(), 1.01**2) and math.isclose(tdc.lam_max.item(), 1.01**2)
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2, tdc_updates_per_step=3).train()
    q(torch.cat([torch.full((1, 2, 2, 2), 9.0), torch.zeros(1, 2, 2, 2)], 1))  # KL far above 4 bits
    assert math.isclose(q.tdc.lam.item(), 1.01**3)
    q.eval()(torch.zeros(1, 4, 2, 2))  # evaluation never moves the controller
    assert math.isclose(q.tdc.lam.item(), 1.01**3)
    with pytest.raises(ValueError, match=r"updates_per_step=0 must be an integer >= 1"):
        TargetDivergenceConstraint(target_bits=8, updates_per_step=0)


def test_plain_kl_regularizer_is_kl_weight_times_the_summed_kl_and_has_no_controller():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2, regularizer="kl", kl_weight=0.5).train()
    h = torch.randn(3, 4, 2, 2)
    out = q(h)
    mu, logvar = h[:, :2], h[:, 2:]
    kl_bits = 0.5 * (mu**2 + logvar.exp() - 1 - logvar) / math.log(2)
    assert out.loss.item() == pytest.approx(0.5 * kl_bits.sum().item() / 3, rel=1e-5)
    assert q.tdc.lam.item() == 1.0  # untouched
    with pytest.raises(ValueError, match=r"regularizer='l2' must be 'tdc' or 'kl'"):
        build_quantizer("gq", codebook_size=16, regularizer="l2")


def test_log_variance_is_clamped_for_the_kl_the_sample_and_the_gradient():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=1, num_codebooks=1, logvar_range=(-30.0, 20.0)).eval()
    mu = torch.tensor([0.5, 0.5, 0.5]).view(1, 1, 1, 3)
    logvar = torch.tensor([30.0, -40.0, 3.0]).view(1, 1, 1, 3).requires_grad_()
    out = q(torch.cat([mu, logvar], 1))
    clamped = torch.tensor([20.0, -30.0, 3.0], dtype=torch.float64)
    want = 0.5 * (0.25 + clamped.exp() - 1 - clamped) / math.log(2)  # closed-form KL (bits) at the clamped values
    assert math.isclose(out.stats["bits_max"], want[0].item(), rel_tol=1e-6)
    assert math.isclose(out.stats["bits_min"], want[2].item(), rel_tol=1e-6)
    assert math.isclose(out.stats["bits_mean"], want.mean().item(), rel_tol=1e-6)
    # the posterior sample's spread uses the clamped σ: |sample - μ| / σ is the same normal draw for all three
    torch.manual_seed(0)
    sample = q(torch.cat([mu, logvar], 1)).continuous.flatten()
    torch.manual_seed(0)
    eps = torch.randn(1, 1, 1, 3).flatten()
    assert torch.allclose(sample.double(), mu.flatten().double() + (0.5 * clamped).exp() * eps.double(), rtol=1e-5)
    # outside the range no gradient reaches the encoder's log-variance
    q.train()
    q(torch.cat([mu, logvar], 1)).loss.backward()
    assert logvar.grad[0, 0, 0, 0] == 0 and logvar.grad[0, 0, 0, 1] == 0 and logvar.grad[0, 0, 0, 2] != 0


def test_tdc_loss_has_gradient_only_through_the_kl():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2)
    h = torch.randn(2, q.in_channels, 3, 3, requires_grad=True)
    out = q(h)
    out.loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert not q.tdc.lam.requires_grad


# ---- bad options --------------------------------------------------------------------------------

def test_codebook_size_not_power_of_two():
    with pytest.raises(ValueError, match=r"codebook_size=1000 is not a power of 2.*512 or 1024"):
        build_quantizer("gq", codebook_size=1000)


def test_channels_not_divisible_by_codebook_dim():
    with pytest.raises(ValueError, match=r"channels=8 are not divisible by codebook_dim=3"):
        build_quantizer("gq", codebook_size=256, codebook_dim=3, channels=8)


def test_unknown_quantizer_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown quantizer 'vqq'; known quantizers: .*gq"):
        build_quantizer("vqq", codebook_size=256)
    assert "gq" in known_quantizers()


def test_bad_gq_input_shape_names_the_expected_channels():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=2).eval()
    with pytest.raises(ValueError, match=r"in_channels=8"):
        q.encode(torch.randn(1, 4, 2, 2))


def test_codebook_dim_defaults_to_log2_k_and_bits_per_token():
    q = build_quantizer("gq", codebook_size=2**16, num_codebooks=2)
    assert q.codebook_dim == 16 and q.in_channels == 64 and q.out_channels == 32
    assert q.bits_per_token == 32
