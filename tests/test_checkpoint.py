"""Checkpoints: a training checkpoint restores every stateful part (loss side included) and the RNG; files are
written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gqbench.checkpoint import (
    atomic_write_bytes, load_checkpoint, restore_training_state, save_checkpoint, training_state, write_json,
)
from gqbench.losses import GANLoss, ReconstructionLoss
from quantizers import build_quantizer

CPU = torch.device("cpu")


def make_run(seed: int):
    """A miniature of train(): an autoencoder-like model holding a GQ quantizer (TDC λs are buffers), the
    loss-side parts (learned log-variance, discriminator) and both optimizers, each with some state."""
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"enc": torch.nn.Conv2d(3, 8, 1), "quantizer": build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=2)})
    parts = torch.nn.ModuleDict({
        "reconstruction": ReconstructionLoss(learn_logvar=True),
        "gan": GANLoss(disc_weight=0.5, start_step=0, ndf=4, n_layers=1),
    })
    opt_ae = torch.optim.Adam(list(model.parameters()) + list(parts["reconstruction"].parameters()), lr=1e-2)
    opt_d = torch.optim.Adam(parts["gan"].parameters(), lr=1e-2)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        out = model["quantizer"](model["enc"](x))
        rec, _ = parts["reconstruction"](x[:, :1].expand(-1, 3, -1, -1), out.z_q[:, :3])
        opt_ae.zero_grad()
        (rec + out.loss).backward()
        opt_ae.step()
        d_loss, _ = parts["gan"].discriminator_loss(x, x.flip(0), 0)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    return {"model": model, "parts": parts, "opt_ae": opt_ae, "opt_d": opt_d}


def flat_state(stateful) -> dict[str, torch.Tensor]:
    out = {}
    for name, part in stateful.items():
        state = part.state_dict()
        if isinstance(part, torch.optim.Optimizer):
            state = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
        out.update({f"{name}.{k}": torch.as_tensor(v) for k, v in state.items()})
    return out


def test_restore_brings_back_every_part_including_loss_side_state_and_the_rng(tmp_path):
    saved_run = make_run(seed=0)
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "last.pt", training_state(7, saved_run, CPU, stats={"loss": 1.5}))
    expected_draw = torch.rand(3)

    other_run = make_run(seed=1)  # different weights, λs, log-variance, discriminator and optimizer moments
    before = flat_state(other_run)
    assert any(not torch.equal(before[k], v) for k, v in flat_state(saved_run).items())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert restore_training_state(ckpt, other_run, CPU) == 7
    assert ckpt["stats"] == {"loss": 1.5}

    restored, original = flat_state(other_run), flat_state(saved_run)
    assert restored.keys() == original.keys()
    for key in original:
        assert torch.equal(restored[key], original[key]), key
    # the loss-side state is in there, and it did move away from its initial values
    assert "parts.reconstruction.logvar" in restored and restored["parts.reconstruction.logvar"].item() != 0.0
    assert any(k.startswith("parts.gan.") for k in restored) and any(k.startswith("opt_d.") for k in restored)
    assert restored["model.quantizer.tdc.lam"].item() != 1.0
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where the saved run was


def test_restore_refuses_a_part_the_checkpoint_lacks_or_has_extra():
    run = make_run(seed=0)
    ckpt = training_state(3, {**run, "opt_d": None}, CPU)
    with pytest.raises(ValueError, match=r"checkpoint at step 3 lacked 'opt_d' but this run has it"):
        restore_training_state(ckpt, run, CPU)
    ckpt = training_state(3, run, CPU)
    with pytest.raises(ValueError, match=r"checkpoint at step 3 had 'opt_d' but this run lacks it"):
        restore_training_state(ckpt, {**run, "opt_d": None}, CPU)
    assert restore_training_state(training_state(4, {**run, "opt_d": None}, CPU), {**run, "opt_d": None}, CPU) == 4


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}

    def half_written(f):
        f.write(b'{"a": 2')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, half_written)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    assert load_checkpoint(tmp_path / "missing.pt") is None


def test_cuda_rng_state_is_saved_and_restored_for_the_training_device_only(monkeypatch):
    """No GPU here: torch.cuda's RNG calls are recorded, the branch logic is real."""
    import numpy as np

    from gqbench import checkpoint as C

    calls = []
    sentinel = torch.tensor([7], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or sentinel)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, device)))
    gpu = torch.device("cuda", 1)
    state = C.rng_state(gpu)
    assert state["cuda"] is sentinel and calls == [("get", gpu)] and set(state) == {"torch", "cuda"}
    assert set(C.rng_state(CPU)) == {"torch"}
    calls.clear()
    C.set_rng_state(state, gpu)
    assert calls == [("set", sentinel, gpu)]
    calls.clear()
    C.set_rng_state(state, CPU)  # a CUDA checkpoint resumed on CPU: only the CPU generator
    C.set_rng_state({"torch": state["torch"]}, gpu)  # a CPU checkpoint resumed on a GPU: nothing to set there
    assert calls == []
    restore_training_state({"step": 2, "rng": state}, {}, gpu)
    assert calls == [("set", sentinel, gpu)]
    # plain containers load back; anything that needs arbitrary unpickling is refused (weights_only=True)
    plain = {"x": 1.5, "config": {"a": [1, None, "s"]}, "t": (1, 2)}
    assert C.load_checkpoint(_saved(plain)) == plain
    with pytest.raises(Exception, match="Weights only load failed"):
        C.load_checkpoint(_saved({"x": np.float64(1.5)}))


def _saved(obj):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "c.pt"
    save_checkpoint(path, obj)
    return path


def test_absent_parts_are_skipped_without_skipping_the_rest():
    saved, fresh = make_run(seed=0), make_run(seed=1)
    ckpt = training_state(5, {"opt_d": None, **{k: v for k, v in saved.items() if k != "opt_d"}}, CPU)
    target = {"opt_d": None, **{k: v for k, v in fresh.items() if k != "opt_d"}}
    assert list(ckpt)[:2] == ["step", "opt_d"]  # the absent part comes first: the loop must go on after it
    assert restore_training_state(ckpt, target, CPU) == 5
    assert torch.equal(fresh["model"]["enc"].weight, saved["model"]["enc"].weight)
    with pytest.raises(ValueError, match=r"the run's config differs from the one that wrote the checkpoint$"):
        restore_training_state(ckpt, fresh, CPU)


def test_json_records_are_sorted_and_indented(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": {"d": tmp_path.name, "c": 2}})
    assert (tmp_path / "m.json").read_text() == (
        '{\n  "a": {\n    "c": 2,\n    "d": "' + tmp_path.name + '"\n  },\n  "b": 1\n}')
    write_json(tmp_path / "p.json", {"path": tmp_path})  # non-JSON values are written as text
    assert json.loads((tmp_path / "p.json").read_text()) == {"path": str(tmp_path)}


def test_the_temporary_file_is_a_hidden_sibling_of_the_target(tmp_path):
    """os.replace is atomic only within one file system, and a visible half-written `*.pt` could be picked up:
    the write goes to `.<name>.<random>.tmp` in the target's own folder."""
    seen = []
    atomic_write_bytes(tmp_path / "last.pt", lambda f: seen.extend(tmp_path.iterdir()) or f.write(b"x"))
    assert len(seen) == 1  # while writing, the folder holds only the temporary file
    tmp = Path(seen[0])
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.pt.") and tmp.name.endswith(".tmp")
    assert (tmp_path / "last.pt").read_bytes() == b"x" and not tmp.exists()


def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path):
    import os

    from gqbench.checkpoint import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "table.md", lambda f: f.write(b"x"))
        with open(tmp_path / "plain.md", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "table.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
