"""What a job's processes need from their surroundings: ranks, device, process group, signals, the job lock,
seeding, and the few collectives the trainer and the evaluator use.

One job = one process (`python -m gqbench.sweep`) or N processes of one process group:
- `torchrun --nproc_per_node=N -m gqbench.sweep ...` (env:// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*);
- submitit with `tasks_per_node=N` (`hydra/launcher=submitit_local|submitit_slurm hydra.launcher.tasks_per_node=N`):
  every task runs the Hydra job; the ranks come from submitit's job environment. Never wrap torchrun inside
  submitit: that would start N×N processes.

Seeding: every rank seeds the same generators with the same seed, and every random draw in training has the
shape of the *global* batch (each rank uses its own slice; quantizers._utils.batch_randn_like), so the random
streams, and therefore the trajectory and the checkpoint, do not depend on the world size. A resumed run may use
a different world size as long as it divides train.batch_size.

Failure: with gloo a dead peer breaks the next collective at once ("Connection reset by peer"); with NCCL a
peer's death is only seen when the collective times out (`runtime.collective_timeout_s`). Every rank records its
own error; rank 0 owns the MLflow run, the checkpoint and the job folder's files.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import random
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | env | submitit

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_environment(environ: dict[str, str] | None = None) -> Ranks:
    """The ranks this process belongs to: torchrun's env:// variables, else submitit's task environment
    (exported as env:// variables for init_process_group), else a single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), launcher)
    if env.get("SUBMITIT_EXECUTOR") and environ is None:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return Ranks(dist_env.rank, dist_env.world_size, dist_env.local_rank, "submitit")
    return Ranks()


def resolve_device(name: str, ranks: Ranks = Ranks()) -> torch.device:
    """`auto` = CUDA when available; in a multi-process job every rank takes GPU `local_rank`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
        if ranks.distributed:
            if device.index is not None:
                raise ValueError(f"device={name!r} names one GPU, but this job has {ranks.world_size} processes; "
                                 "use device=cuda (each process takes GPU LOCAL_RANK)")
            device = torch.device("cuda", ranks.local_rank)
    return device


class Terminated(BaseException):
    """SIGTERM or SIGUSR2 arrived (SLURM time limit or preemption, scancel, kill) and nobody else handles it. The job records it (KILLED) like a failure, but it is a
    BaseException, like KeyboardInterrupt, so a local multirun stops instead of starting the next job (Hydra's
    launcher catches only Exception, which is what keeps a sweep going past a failed job). `checkpointed` is
    True when the trainer stopped after writing a checkpoint of its last step (every rank stopped together)."""

    def __init__(self, message: str, checkpointed: bool = False):
        super().__init__(message)
        self.checkpointed = checkpointed


class StopSignals:
    """SIGTERM, and SIGUSR2 (what SLURM/submitit send ahead of a time limit or a preemption), for a job's duration.

    Outside `deferred()`, a signal goes at once to whoever handled it before us (submitit requeues the job
    there), or, when nobody did, raises Terminated. Inside `deferred()` (the training loop) it is only recorded:
    the trainer finishes its step, writes a checkpoint of that step and calls `proceed()`, so a stopped job
    loses no finished step. Only the first signal counts. Nothing is installed off the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferring = False

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            return
        self.received = signum
        if not self._deferring:
            self.proceed(frame)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def requested(self) -> bool:
        """Whether to stop after this step: a signal reached this process, or, in a multi-process job, any rank
        (one all_reduce of a flag on a CPU group, so every rank stops at the same step; no device sync)."""
        flag = self.received is not None
        if is_distributed():
            box = torch.tensor([int(flag)])
            dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_control_group())
            flag = bool(box.item())
        return flag

    def proceed(self, frame=None, checkpointed: bool = False) -> None:
        """Hand the recorded signal on: to the previous handler (submitit: requeue and exit) or raise Terminated.
        A previous handler that returns (submitit bypasses SIGTERM after its SIGUSR2) lets the job go on. A rank
        that stops because another rank received the signal acts as if it had received SIGTERM."""
        signum = self.received if self.received is not None else signal.SIGTERM
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
            self.received = None
            return
        raise Terminated(f"received signal {signum}" if self.received is not None else
                         "another rank of this job received a stop signal", checkpointed=checkpointed)


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """While a failure is being recorded: the SIGTERM a launcher sends the surviving ranks after one died
    (torchrun, submitit) must not interrupt the MLflow write that records it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in StopSignals.SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def exclusive_job(lock_file: Path) -> Iterator[None]:
    """One process group per job folder: two sweeps that contain the same job must not train into one checkpoint."""
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"job folder {lock_file.parent} is in use by another process ({f.read().strip() or 'unknown'}); "
                "the same job is running elsewhere — wait for it, its result will be reused"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def seed_everything(seed: int) -> None:
    """The same seed on every rank (see the module docstring)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device, timeout_s: float) -> Iterator[None]:
    """init_process_group for a multi-process job (gloo on CPU, NCCL on CUDA); nothing for one process."""
    if not ranks.distributed:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    global _CONTROL
    _CONTROL = dist.new_group(backend="gloo") if backend != "gloo" else None  # host-side flags next to NCCL
    try:
        yield
    finally:
        _CONTROL = None
        dist.destroy_process_group()


_CONTROL = None


def _control_group():
    """The process group for host-side control flags: gloo, so agreeing on a flag never touches the GPU."""
    return _CONTROL


@contextlib.contextmanager
def job_lock(ranks: Ranks, lock_file: Path) -> Iterator[None]:
    """Rank 0 takes the job folder's lock; every rank learns whether it got it (and fails together if not)."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if ranks.is_main:
            try:
                stack.enter_context(exclusive_job(lock_file))
            except RuntimeError as exc:
                refusal = str(exc)
        refusal = broadcast_object(refusal)
        if refusal is not None:
            raise RuntimeError(refusal)
        yield


SLURM_TAGS = {"SLURM_JOB_ID": "slurm_job_id", "SLURM_ARRAY_JOB_ID": "slurm_array_job_id",
              "SLURM_ARRAY_TASK_ID": "slurm_array_task_id", "SLURM_RESTART_COUNT": "slurm_restart_count",
              "SLURM_JOB_PARTITION": "slurm_partition"}


def provenance_tags(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Where and from what code this process runs: host, the git commit of the code (with "-dirty" when the
    checkout has uncommitted changes; "unknown" for an installed copy without git), and SLURM's job, array task
    and restart count when a scheduler started it. Set again on every (re)start of the job."""
    import subprocess

    env = os.environ if environ is None else environ
    tags = {"host": socket.gethostname(), "git_commit": "unknown"}
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            tags["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    tags.update({tag: env[var] for var, tag in SLURM_TAGS.items() if env.get(var)})
    return tags


# -- collectives (no-ops in a single process) ------------------------------------------------------------

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank: one collective whatever each rank computed before,
    so ranks that saw different numbers of batches cannot hang here."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_across_ranks_(*tensors: torch.Tensor) -> None:
    """Replace each tensor by its mean over ranks, in place (one all_reduce per tensor)."""
    if not is_distributed():
        return
    for t in tensors:
        dist.all_reduce(t)
        t /= dist.get_world_size()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over ranks for parameters outside a DistributedDataParallel wrapper (one flat all_reduce)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def peer_failure_hint(exc: BaseException, ranks: Ranks) -> str:
    """The error text to record, with where to look when the real cause is another rank's death."""
    text = f"{type(exc).__name__}: {exc}"
    if ranks.distributed and isinstance(exc, RuntimeError) and any(
            s in str(exc) for s in ("Connection reset", "Connection closed", "gloo", "NCCL", "Broken pipe")):
        text = (f"rank {ranks.rank} of {ranks.world_size}: another rank of this job stopped (its own error is the "
                f"run's error.rank<N> tag or its log); {text}")
    return text
