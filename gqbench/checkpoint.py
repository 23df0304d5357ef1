"""Checkpoints: what a training checkpoint holds, and atomic files.

A training checkpoint holds every piece of state a resumed run needs to continue bit-exactly on CPU: the
step, the state dict of every stateful part (autoencoder with its quantizer state such as the TDC λs, the
loss-side modules such as the learned log-variance and the discriminator, both optimizers), the RNG state
and the last step's stats. `training_state` / `restore_training_state` are the one place that decides that.

Files are written to a temporary file in the same folder, fsynced, then os.replace'd: a kill during the write
leaves the previous checkpoint intact (the rename is atomic on POSIX).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would have
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":  # only the training device: the resumed job may see a different GPU count
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def training_state(step: int, parts: dict[str, Any], device: torch.device, **extra) -> dict[str, Any]:
    """The checkpoint of a run at `step`: every part's state dict (None for an absent part), RNG, `extra`."""
    state = {name: part.state_dict() if part is not None else None for name, part in parts.items()}
    return {"step": step, **state, "rng": rng_state(device), **extra}


def restore_training_state(ckpt: dict[str, Any], parts: dict[str, Any], device: torch.device) -> int:
    """Load every part present in both the checkpoint and `parts`, and the RNG state; returns the step.

    A part the run has but the checkpoint lacks is an error (resuming without, e.g., the discriminator would
    silently restart it); a part the checkpoint has as None (not built then) must be None now too."""
    for name, part in parts.items():
        saved = ckpt.get(name)
        if part is None and saved is None:
            continue
        if part is None or saved is None:
            have, had = "has" if part is not None else "lacks", "had" if saved is not None else "lacked"
            raise ValueError(f"checkpoint at step {ckpt.get('step')} {had} {name!r} but this run {have} it; "
                             "the run's config differs from the one that wrote the checkpoint")
        part.load_state_dict(saved)
    set_rng_state(ckpt["rng"], device)
    return int(ckpt["step"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    # tensors and plain containers only (RNG states are tensors): nothing in a checkpoint is ever executed
    return torch.load(path, map_location="cpu", weights_only=True)


def load_untrusted(path: Path, option: str) -> dict[str, Any]:
    """A file someone gave us (a checkpoint, a weights file), with torch.load(weights_only=True): tensors and plain
    containers only; a file that needs arbitrary unpickling (which could run code) is refused with a ValueError
    naming `option`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option}={path} does not exist; give the path of the file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{option}={path} cannot be loaded safely: torch.load(weights_only=True) refused it "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); gqbench loads tensors and "
                         "plain containers only, and never unpickles arbitrary objects (which could run code)") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{option}={path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    atomic_write_bytes(path, lambda f: f.write(text))
