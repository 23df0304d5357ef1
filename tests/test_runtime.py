"""gqbench.runtime: where a process finds its ranks, which device it takes, the job lock, collectives in one
process, and how a failure is described."""
from __future__ import annotations

import pytest
import torch

from gqbench import runtime
from gqbench.runtime import Ranks


def test_ranks_come_from_torchruns_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"}
    assert runtime.ranks_from_environment(env) == Ranks(rank=3, world_size=4, local_rank=1, launcher="torchrun")
    assert runtime.ranks_from_environment({"RANK": "0", "WORLD_SIZE": "2"}).launcher == "env"
    single = runtime.ranks_from_environment({})
    assert single == Ranks() and single.is_main and not single.distributed


def test_device_choice():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto", Ranks(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")
        with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here; use device=cpu"):
            runtime.resolve_device("cuda")
    else:  # pragma: no cover - GPU machines
        assert runtime.resolve_device("cuda", Ranks(rank=1, world_size=2, local_rank=1)) == torch.device("cuda", 1)
        with pytest.raises(ValueError, match=r"device='cuda:0' names one GPU, but this job has 2 processes"):
            runtime.resolve_device("cuda:0", Ranks(rank=0, world_size=2))


def test_the_job_lock_refuses_a_second_holder(tmp_path):
    lock = tmp_path / ".lock"
    with runtime.job_lock(Ranks(), lock):
        assert "pid" in lock.read_text()
        with pytest.raises(RuntimeError, match=r"is in use by another process \(pid \d+ on .*\); the same job is "
                                               r"running elsewhere"):
            with runtime.job_lock(Ranks(), lock):
                pass
    with runtime.job_lock(Ranks(), lock):  # released
        pass


def test_collectives_are_identities_in_one_process():
    assert runtime.broadcast_object({"a": 1}) == {"a": 1}
    assert runtime.gather_objects(5) == [5]
    t = torch.tensor([1.0, 3.0])
    runtime.average_across_ranks_(t)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([2.0, 4.0])
    runtime.average_gradients([p])
    assert t.tolist() == [1.0, 3.0] and p.grad.tolist() == [2.0, 4.0]


def test_a_peers_death_is_described_as_such():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:6043: Connection reset by peer")
    text = runtime.peer_failure_hint(gloo, Ranks(rank=0, world_size=2))
    assert text.startswith("rank 0 of 2: another rank of this job stopped") and "Connection reset by peer" in text
    assert runtime.peer_failure_hint(gloo, Ranks()) == f"RuntimeError: {gloo}"  # one process: as it is
    assert runtime.peer_failure_hint(ValueError("bad"), Ranks(world_size=2)) == "ValueError: bad"


def test_stop_signals_raise_at_once_outside_training_and_after_the_step_inside_it():
    import os
    import signal

    with pytest.raises(runtime.Terminated, match="received signal 15"):
        with runtime.StopSignals():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # pragma: no cover - the handler raises first
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)  # restored

    with runtime.StopSignals() as stop:
        with stop.deferred():
            assert not stop.requested()
            os.kill(os.getpid(), signal.SIGUSR2)  # recorded only: the step goes on
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
            assert stop.received == signal.SIGUSR2 and stop.requested()
            with pytest.raises(runtime.Terminated, match=f"received signal {int(signal.SIGUSR2)}"):
                stop.proceed()
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, None)


def test_a_stop_signal_goes_on_to_the_handler_that_was_there_before(monkeypatch):
    """submitit's own SIGUSR2 handler (requeue) runs after our checkpoint; if it returns, the job goes on."""
    import os
    import signal

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with runtime.StopSignals() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGUSR2)
                assert seen == [] and stop.requested()
                stop.proceed()
                assert seen == [signal.SIGUSR2] and not stop.requested()
            os.kill(os.getpid(), signal.SIGUSR2)  # outside the training loop: handed on at once
            assert seen == [signal.SIGUSR2] * 2
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_the_job_folder_names_its_files_and_clears_interrupted_writes(tmp_path):
    from gqbench.checkpoint import write_json
    from gqbench.jobdir import JobDir

    job = JobDir(tmp_path / "jobs" / "abc123").create()
    assert job.signature == "abc123" and job.checkpoint.name == "last.pt" and job.metrics.name == "metrics.json"
    assert job.run_id_file("7").name == "mlflow_run_id.7"
    write_json(job.metrics, {"status": "finished"})
    (job.path / ".last.pt.x1y2.tmp").write_bytes(b"")  # what a kill -9 during an atomic write leaves
    assert [p.name for p in job.remove_stale_temporaries()] == [".last.pt.x1y2.tmp"]
    assert sorted(p.name for p in job.path.iterdir()) == ["metrics.json"]


def test_provenance_tags_name_the_host_the_commit_and_the_slurm_job():
    import socket
    import subprocess

    from conftest import ROOT

    tags = runtime.provenance_tags({"SLURM_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "4", "SLURM_RESTART_COUNT": "1"})
    assert tags["host"] == socket.gethostname()
    assert (tags["slurm_job_id"], tags["slurm_array_task_id"], tags["slurm_restart_count"]) == ("123", "4", "1")
    assert "slurm_partition" not in tags
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # a git checkout (CI clones one)
        assert tags["git_commit"].removesuffix("-dirty") == head
    assert "slurm_job_id" not in runtime.provenance_tags({})



def test_stop_signals_are_ignored_while_a_failure_is_recorded():
    import os
    import signal

    with runtime.StopSignals():
        with runtime.stop_signals_ignored():
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun stopping the surviving ranks: no Terminated here
            os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(runtime.Terminated):  # afterwards the job's own handling is back
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # pragma: no cover
