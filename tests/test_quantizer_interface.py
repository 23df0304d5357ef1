"""The contract every registered quantizer keeps (quantizers/base.py), checked for each name in the registry."""
from __future__ import annotations

import math

import pytest
import torch

from quantizers import Quantizer, build_quantizer, known_quantizers


@pytest.mark.parametrize("name", known_quantizers())
def test_eval_decode_of_encode_equals_forward_with_int64_indices(name):
    torch.manual_seed(0)
    q = build_quantizer(name, codebook_size=16, codebook_dim=2, num_codebooks=3)
    assert isinstance(q, Quantizer)
    assert q.bits_per_token == 3 * math.log2(16)
    h = torch.randn(2, q.in_channels, 4, 5)
    q.train()
    out = q(h)
    assert out.z_q.shape == (2, q.out_channels, 4, 5) and out.loss.dim() == 0
    q.eval()
    out = q(h)
    assert out.indices.dtype == torch.int64 and out.indices.shape == (2, 3, 4, 5)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 16
    assert torch.equal(q.encode(h), out.indices)
    assert torch.equal(q.decode(out.indices), out.z_q)


@pytest.mark.parametrize("name", known_quantizers())
def test_decode_rejects_indices_of_the_wrong_shape(name):
    q = build_quantizer(name, codebook_size=16, codebook_dim=2, num_codebooks=3)
    with pytest.raises(ValueError, match="num_codebooks=3"):
        q.decode(torch.zeros(2, 2, 4, 4, dtype=torch.long))
