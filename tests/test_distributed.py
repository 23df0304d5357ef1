"""Two real ranks (gloo on CPU): the quantizers' shared state stays identical across ranks fed different data.

VQ all-reduces its counts and sums and re-seeds codewords from the all-gathered global batch; TDC all-reduces the
batch KL statistics before every λ update. Without that, ranks would drift apart and a checkpoint would depend on
which rank wrote it. As in a gqbench job (gqbench.runtime), every rank's global RNG is in the same state.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from quantizers import build_quantizer
from quantizers.tdc import _global_stats

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same initial modules on both ranks ...
        vq = build_quantizer("vq", codebook_size=16, codebook_dim=2, num_codebooks=2, init="kmeans",
                             ema_update=True, dead_code_threshold=0.8, decay=0.5).train()
        gq = build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=2).train()
        data = torch.Generator().manual_seed(100 + rank)  # ... but each rank its own data
        for step in range(4):
            vq(torch.randn(2, 4, 3, 3, generator=data) * (1 + rank))
            gq(torch.randn(2, 8, 3, 3, generator=data) * (1 + 3 * rank))
        # the controller's batch statistics are those of all ranks' groups together (shapes differ per rank)
        bits = torch.tensor([[3.0, 5.0], [2.0, 6.0]]) if rank == 0 else torch.tensor([[9.0, 1.5, 7.0]])
        torch.save(_global_stats(bits), os.path.join(out_dir, f"stats{rank}.pt"))
        state = {f"vq.{k}": v for k, v in vq.state_dict().items()}
        state.update({f"gq.{k}": v for k, v in gq.state_dict().items()})
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_quantizer_state_is_identical_across_ranks_with_different_data(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    everything = torch.tensor([3.0, 5.0, 2.0, 6.0, 9.0, 1.5, 7.0], dtype=torch.float64)
    want = (everything.mean().item(), everything.min().item(), everything.max().item())
    for r in range(WORLD):
        assert torch.load(tmp_path / f"stats{r}.pt") == pytest.approx(want, rel=1e-12)
    # the state did move: k-means ran, restarts and EMA changed the codebook, λ left 1
    assert bool(states[0]["vq.initialized"])
    assert states[0]["gq.tdc.lam"].item() != 1.0


def _evaluate_worker(rank: int, world: int, port: int, out_dir: str, inception: str) -> None:
    """Evaluate the same (seeded, untrained) GQ autoencoder on 12 images in batches of 4: 3 batches, so with two
    ranks rank 0 evaluates two and rank 1 one. rFID's reference is cached per world size, so both compute it."""
    from conftest import FAST_OVERRIDES, compose_config
    from gqbench.evaluate import evaluate
    from gqbench.job import assemble
    from gqbench.metrics import build_metrics

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        parts = assemble(compose_config(FAST_OVERRIDES))
        metrics, _ = build_metrics({"inception_weights": inception, "lpips": False,
                                    "cache_dir": os.path.join(out_dir, f"cache{world}")}, parts.quantizer,
                                   is_main=rank == 0)
        result = evaluate(parts.model, parts.data.val, num_images=12, batch_size=4, grid_images=2,
                          device=torch.device("cpu"), grid_file=Path(out_dir, f"grid{world}.png") if rank == 0 else None,
                          seed=3, metrics=metrics)
        torch.save(result.metrics, os.path.join(out_dir, f"eval{world}-{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.job  # a whole evaluation on three processes: left out of mutation runs
@pytest.mark.timeout(300)
def test_evaluation_over_two_ranks_with_unequal_batch_counts_equals_one_process(tmp_path, weight_files):
    inception = str(weight_files["inception"])
    _evaluate_worker(0, 1, 0, str(tmp_path), inception)
    mp.spawn(_evaluate_worker, args=(2, _free_port(), str(tmp_path), inception), nprocs=2, join=True)
    one = torch.load(tmp_path / "eval1-0.pt")
    two = [torch.load(tmp_path / f"eval2-{r}.pt") for r in range(2)]
    assert two[0] == two[1]  # every rank returns the merged metrics
    assert one["eval_images"] == two[0]["eval_images"] == 12
    assert "continuous_psnr" in one  # the posterior sample is seeded per batch: the same on any rank
    # rFID: the feature moments merge exactly, up to summation order (then a 2048² eigen-decomposition)
    assert two[0].pop("rfid") == pytest.approx(one.pop("rfid"), rel=1e-7)
    assert {"effective_bits_per_token", "codebook_usage_relative", "ssim"} <= set(one)
    assert two[0] == pytest.approx(one, rel=1e-12, abs=1e-12)
    assert (tmp_path / "grid2.png").read_bytes() == (tmp_path / "grid1.png").read_bytes()
