"""Count the device->host syncs a piece of code makes, on any device (CPU included), and say where they come from.

A sync is an op whose result the host must wait for: reading a value back (`.item()`, `bool(t)`, `float(t)`: all
`aten::_local_scalar_dense`; `.tolist()`, `.numpy()`, `.cpu()`), or an op whose output shape depends on the data
(nonzero, masked_select, unique, bincount, boolean-mask indexing). On a GPU each one stalls the CPU until the
queue drains; on the CPU they cost nothing, which is why they are counted by op rather than timed.

Left out: ops called from inside torch.optim (optimizers keep their step counters on the host even on a GPU,
unless `capturable`) and torch.utils.data (the data pipeline runs on the host before the batch is moved).
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
OURS = tuple(str(ROOT / d) for d in ("gqbench", "quantizers", "kernels"))
SHAPE_DEPENDS_ON_DATA = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                         "unique_dim_consecutive", "repeat_interleave", "bincount"}
READ_BACK = {"tolist", "numpy", "cpu"}  # seen as tensor methods (a TorchFunctionMode), not as aten ops on CPU
HOST_SIDE = ("/torch/optim/", "/torch/utils/data/")


def _is_sync(func, args) -> bool:
    name = func.overloadpacket.__name__
    if name in ("_local_scalar_dense", "is_nonzero") or name in SHAPE_DEPENDS_ON_DATA:
        return True
    if name in ("index", "index_put", "index_put_"):  # boolean-mask indexing runs nonzero inside
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ())
    return False


class _DispatchSpy(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_sync(func, args):
            self.record(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class _FunctionSpy(TorchFunctionMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READ_BACK:
            self.record(name)
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """with HostSyncs() as syncs: ...; then syncs.events = [(op, where)], where = the innermost frame in our
    packages ("gqbench/train.py:123") or "torch" when none of ours is on the stack."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self._modes = (_FunctionSpy(self._record), _DispatchSpy(self._record))

    def _record(self, op: str) -> None:
        stack = traceback.extract_stack()[:-3]
        if any(part in frame.filename for frame in stack for part in HOST_SIDE):
            return
        ours = [f for f in stack if f.filename.startswith(OURS)]
        self.events.append((op, f"{Path(ours[-1].filename).relative_to(ROOT)}:{ours[-1].lineno}" if ours else "torch"))

    def __enter__(self) -> "HostSyncs":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def mark(self) -> int:
        return len(self.events)

    def since(self, start: int) -> list[tuple[str, str]]:
        return self.events[start:]


def summarize(events: list[tuple[str, str]]) -> dict[str, int]:
    return dict(collections.Counter(f"{op} @ {where}" for op, where in events))
