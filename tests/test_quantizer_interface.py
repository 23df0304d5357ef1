"""The contract every registered quantizer keeps (quantizers/base.py), checked for each name in the registry."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers import Quantizer, build_quantizer, known_quantizers

# A small instance of every method with 3 groups per token; a new method must add itself here.
SMALL = {
    "gq": dict(codebook_size=16, codebook_dim=2),
    "vq": dict(codebook_size=16, codebook_dim=2),
    "fsq": dict(codebook_size=None, levels=[5, 4]),
    "lfq": dict(codebook_size=16),
    "bsq": dict(codebook_size=16),
    "tokenbridge": dict(codebook_size=4),
}


def test_every_registered_method_has_a_small_instance_here():
    assert set(known_quantizers()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_eval_decode_of_encode_equals_forward_with_int64_indices(name):
    torch.manual_seed(0)
    q = build_quantizer(name, num_codebooks=3, **SMALL[name])
    assert isinstance(q, Quantizer)
    assert q.bits_per_token == pytest.approx(3 * math.log2(q.codebook_size))
    h = torch.randn(2, q.in_channels, 4, 5, requires_grad=True)
    q.train()
    out = q(h)
    assert out.z_q.shape == (2, q.out_channels, 4, 5) and out.loss.dim() == 0
    (out.z_q.square().sum() + out.loss).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    q.eval()
    out = q(h)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (2, 3, 4, 5)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    assert torch.equal(q.encode(h), out.indices)
    assert torch.equal(q.decode(out.indices), out.z_q)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_decode_rejects_indices_of_the_wrong_shape(name):
    q = build_quantizer(name, num_codebooks=3, **SMALL[name])
    with pytest.raises(ValueError, match="num_codebooks=3"):
        q.decode(torch.zeros(2, 2, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bad_input_channels_name_the_expected_count(name):
    q = build_quantizer(name, num_codebooks=3, **SMALL[name])
    with pytest.raises(ValueError, match=f"in_channels={q.in_channels}"):
        q(torch.randn(1, q.in_channels + 1, 2, 2))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_config_builds_a_quantizer_that_fits_the_default_latent(name):
    from conftest import compose_config
    from gqbench.config import quantizer_from_config

    cfg = compose_config([f"quantizer={name}"])
    q = quantizer_from_config(cfg)
    assert q.out_channels == cfg.model.z_channels and type(q).__name__ in repr(q)


def test_each_method_sizes_itself_for_the_latent_width():
    # null codebook_dim: the method's own dims (FSQ: len(levels); GQ: log2 K); groups = channels / dims
    assert build_quantizer("fsq", codebook_size=256, channels=6).num_codebooks == 2  # [8,6,5]: 3 dims per group
    assert build_quantizer("fsq", codebook_size=None, levels=[5, 3, 3], channels=6).num_codebooks == 2
    assert build_quantizer("gq", codebook_size=256, channels=8).num_codebooks == 1  # log2 256 = 8 dims
    assert build_quantizer("gq", codebook_size=256, codebook_dim=4, channels=8).in_channels == 16  # mean + logvar
    assert build_quantizer("tokenbridge", codebook_size=4, channels=8).num_codebooks == 8
    assert build_quantizer("gq", codebook_size=256, codebook_dim=4).num_codebooks == 1  # no channels: one group
    with pytest.raises(ValueError, match=r"quantizer 'vq' needs codebook_dim or num_codebooks to split 8 latent channels"):
        build_quantizer("vq", codebook_size=256, channels=8)
    with pytest.raises(ValueError, match=r"latent channels=8 are not divisible by codebook_dim=3"):
        build_quantizer("gq", codebook_size=256, codebook_dim=3, channels=8)
    with pytest.raises(ValueError, match=r"decodes to 12 latent channels but the model has channels=8; set model.z_channels=12"):
        build_quantizer("gq", codebook_size=256, codebook_dim=4, num_codebooks=3, channels=8)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("bad, message", [(-1, r"range over \[-1"), ("top", "codebook_size="), ("float", "integer tensor")])
def test_decode_refuses_out_of_range_or_non_integer_indices(name, bad, message):
    q = build_quantizer(name, num_codebooks=3, **SMALL[name])
    idx = torch.zeros(1, 3, 2, 2, dtype=torch.long)
    if bad == "float":
        idx = idx.float()
    else:
        idx[0, 1, 1, 0] = q.codebook_size if bad == "top" else bad
    with pytest.raises(ValueError, match=message):
        q.decode(idx)
