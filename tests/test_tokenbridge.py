"""TokenBridge (quantizers/tokenbridge.py): Gaussian-quantile levels, nearest-level indices, both regularisers."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers import build_quantizer
from quantizers._utils import channels_to_groups
from quantizers.tokenbridge import truncated_normal_levels


def test_levels_are_truncated_normal_bin_means():
    two = truncated_normal_levels(2, 3.0)
    # bins [-3, 0] and [0, 3]: the half normal's mean truncated at 3, (φ(0) − φ(3)) / (Φ(3) − ½) = 0.7912
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    half = (phi(0) - phi(3)) / (0.5 * math.erf(3 / math.sqrt(2)))
    assert two.tolist() == pytest.approx([-half, half], rel=1e-9)
    many = truncated_normal_levels(64, 3.0)
    assert (many.diff() > 0).all() and many.abs().max() < 3.0
    assert torch.allclose(many, -many.flip(0), atol=1e-12)
    # equal-probability bins: the middle levels are close to the bin-centre quantiles
    assert many[32].item() == pytest.approx(0.0196, abs=2e-3)


@pytest.mark.parametrize("value_range", [3.0, 5.0])  # our identity default, TokenBridge's published map
def test_index_is_the_nearest_level_of_the_mapped_mean_and_decode_undoes_the_map(value_range):
    q = build_quantizer("tokenbridge", codebook_size=8, num_codebooks=2, value_range=value_range).eval()
    mu = torch.randn(3, 2, 4, 4) * 4
    h = torch.cat([mu, torch.full_like(mu, -2.0)], dim=1)
    out = q(h)
    x = (channels_to_groups(mu, 2).reshape(-1) * (3.0 / value_range)).clamp(-3, 3).double()
    levels = truncated_normal_levels(8, 3.0).float().double()
    expected = (x[:, None] - levels).abs().argmin(1)
    assert torch.equal(out.indices.reshape(-1), expected)
    decoded = channels_to_groups(out.z_q, 2).reshape(-1).double()
    assert torch.allclose(decoded, levels[expected] * value_range / 3, atol=1e-6)
    assert out.continuous is not None and out.continuous.shape == mu.shape


def test_tdc_targets_log2_levels_bits_per_channel_and_kl_mode_is_a_plain_penalty():
    tdc = build_quantizer("tokenbridge", codebook_size=16, num_codebooks=4)
    assert tdc.tdc.target_bits == 4
    kl = build_quantizer("tokenbridge", codebook_size=16, num_codebooks=4, regularizer="kl", kl_weight=0.5).train()
    mu, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3) * 0.1
    out = kl(torch.cat([mu, logvar], 1))
    bits = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar) / torch.log(torch.tensor(2.0))
    assert out.loss.item() == pytest.approx(0.5 * bits.sum().item() / 2, rel=1e-5)
    assert kl.tdc.lam.item() == 1.0  # the TDC controller is not used in kl mode


@pytest.mark.parametrize("kwargs, message", [
    (dict(codebook_dim=2), "codebook_dim=2 must be 1"),
    (dict(regularizer="l2"), "regularizer='l2'"),
    (dict(beta=1.0), "beta= is a GQ option"),
    (dict(value_range=0.0), "value_range=0.0"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_quantizer("tokenbridge", codebook_size=4, **kwargs)


def test_levels_are_truncated_normal_bin_means_and_bins_beyond_the_range_sit_on_its_edge():
    from scipy.stats import truncnorm

    from quantizers.tokenbridge import truncated_normal_levels

    levels = truncated_normal_levels(4, 0.5)  # quartile edges ±0.674 lie beyond ±0.5: the outer bins are empty
    inner = truncnorm(0.0, 0.5).mean()  # N(0, 1) conditioned on [0, 0.5], by scipy
    assert torch.allclose(levels, torch.tensor([-0.5, -inner, inner, 0.5], dtype=torch.float64), rtol=0, atol=1e-12)
    big = truncated_normal_levels(1024, 3.0)  # 1/1024 < Φ(-3): the same at the default range
    assert big[0] == -3.0 and big[-1] == 3.0 and bool((big[1:] >= big[:-1]).all())
    edges = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([5 / 16, 6 / 16], dtype=torch.float64))
    assert math.isclose(truncated_normal_levels(16, 3.0)[5].item(), truncnorm(*edges.tolist()).mean(), rel_tol=1e-9)
