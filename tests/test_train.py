"""The training order: the batch at step s is a pure function of (seed, s), which makes resume exact."""
from __future__ import annotations

import pytest
import torch

from gqbench.train import StepBatchSampler


def test_batches_are_a_function_of_seed_and_step():
    full = list(StepBatchSampler(50, 8, seed=5, start_step=0, end_step=20))
    assert full == list(StepBatchSampler(50, 8, seed=5, start_step=0, end_step=20))
    assert full != list(StepBatchSampler(50, 8, seed=6, start_step=0, end_step=20))
    assert all(len(b) == 8 for b in full)
    epoch0 = full[:6]  # 50 // 8 full batches per epoch (drop_last)
    assert len({i for b in epoch0 for i in b}) == 48  # no item twice within an epoch
    assert full[6:12] != epoch0  # a new permutation every epoch
    # resuming at step 9 yields exactly the remaining batches of the full run
    assert list(StepBatchSampler(50, 8, seed=5, start_step=9, end_step=20)) == full[9:]


def test_sampler_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    list(StepBatchSampler(50, 8, seed=0, start_step=0, end_step=10))
    assert torch.equal(before, torch.get_rng_state())


def test_batch_larger_than_the_training_set_is_a_clear_error():
    with pytest.raises(ValueError, match=r"train.batch_size=64 is larger than the training set \(10 images\)"):
        StepBatchSampler(10, 64, seed=0, start_step=0, end_step=1)


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_gets_its_slice_of_the_same_global_batch(world):
    whole = list(StepBatchSampler(50, 8, seed=5, start_step=3, end_step=15))
    slices = [list(StepBatchSampler(50, 8, seed=5, start_step=3, end_step=15, rank=r, world_size=world))
              for r in range(world)]
    for step, batch in enumerate(whole):
        assert [i for r in range(world) for i in slices[r][step]] == batch  # rank order = the 1-process order
        assert all(len(s[step]) == 8 // world for s in slices)


def test_a_global_batch_that_does_not_split_over_the_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match=r"train.batch_size=10 \(the global batch\) does not split evenly over 4 "
                                         r"processes; use a batch size divisible by 4"):
        StepBatchSampler(50, 10, seed=0, start_step=0, end_step=1, rank=1, world_size=4)
