"""The sweeper behind `python -m gqbench.sweep ... -m`: Hydra's basic sweeper (same override grammar, same
`hydra.sweeper.params`, same batches), plus what a re-runnable benchmark needs.

- **Nothing launched twice.** Every job's config is composed on the launch host (Hydra's basic sweeper does the
  same to validate them) and asked gqbench.rerun.plan: a job that finished with the same training signature and
  evaluation settings is not launched at all, on any launcher, and touches no MLflow run. Failed, killed and
  unfinished jobs are launched again and resume; `rerun=eval|all` forces the rest.
- **One parent MLflow run per sweep**, created here before any job starts (so the store and the experiment are
  created once, by one process). Its identity is the experiment plus the jobs' training signatures: running the
  same sweep again, into the same sweep folder or a new one, reopens it instead of adding a run. Each job gets
  `tracking.parent_run_id` and `tracking.swept` (its values of the swept keys) as overrides and becomes the
  parent's child run.
- **A failed job never hides the rest.** Every batch runs to its end; a job that crashed without a result
  (killed, out of memory: submitit's UncompletedJobError) counts as failed and its MLflow run is marked FAILED
  with the reason. The sweep raises one error naming every failed job after the last batch.

Hydra instantiates sweepers only from the `hydra_plugins` namespace; hydra_plugins/gqbench_sweeper registers
this class there as `hydra/sweeper: gqbench`, the default in conf/config.yaml.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from .jobdir import JobDir
from .rerun import Plan, plan, summary
from .runtime import Terminated
from .tracking import DESCRIPTION_TAG, ROLE_TAG, open_experiment

log = logging.getLogger("gqbench.sweep")


@dataclass
class PlannedJob:
    overrides: list[str]
    cfg: DictConfig
    jobdir: JobDir
    plan: Plan

    @property
    def store(self) -> tuple[str | None, str, str]:
        return (self.cfg.tracking.uri, self.cfg.tracking.experiment, str(Path(self.cfg.paths.runs).resolve()))


class SweepFailed(RuntimeError):
    pass


class IdempotentSweeper(Sweeper):
    # Not a subclass of Hydra's BasicSweeper: Hydra's plugin scan re-executes the module that defines it, after
    # which a subclass created earlier no longer passes BasicSweeper's own super() call. Its grammar is used by
    # looking the class up at call time.

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None):
        super().__init__()
        self.max_batch_size, self.params = max_batch_size, dict(params or {})
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from hydra._internal.core_plugins import basic_sweeper

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        overrides = parser.parse_overrides(params + list(arguments))
        batches = basic_sweeper.BasicSweeper.split_arguments(overrides, None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        jobs = [self._plan_job(list(job)) for batch in batches for job in batch]
        swept = swept_keys([job.overrides for job in jobs])
        for number, job in enumerate(jobs):
            log.info("job %d  %s  %s: %s", number, job.jobdir.signature,
                     swept_values(job.overrides, swept) or "(one job)", job.plan.reason
                     + (f" ({summary(job.plan.record)})" if job.plan.action == "skip" and job.plan.record else ""))
        to_launch = [job for job in jobs if job.plan.action != "skip"]
        skipped = len(jobs) - len(to_launch)
        if not to_launch:
            log.info("all %d jobs finished earlier with these settings: nothing to launch (rerun=eval or rerun=all "
                     "to redo them)", len(jobs))
            return []
        if skipped:
            log.info("launching %d of %d jobs (%d finished earlier)", len(to_launch), len(jobs), skipped)

        parents = {store: SweepRun.open(store, [j for j in jobs if j.store == store], arguments, swept,
                                        str(sweep_dir), self.config.hydra.launcher.get("_target_", ""))
                   for store in dict.fromkeys(job.store for job in to_launch)}
        returns: list[Sequence[JobReturn]] = []
        failures: list[tuple[PlannedJob, BaseException]] = []
        first_index = 0
        size = self.max_batch_size or len(to_launch)
        try:
            for start in range(0, len(to_launch), size):
                batch = to_launch[start : start + size]
                launched = [job.overrides + parents[job.store].overrides_for(job, swept) for job in batch]
                with failed_results_are_returned():
                    results = self.launcher.launch(launched, initial_job_idx=first_index)
                for job, result in zip(batch, results):  # (JobReturn.return_value would re-raise the error)
                    if result.status != JobStatus.COMPLETED:
                        failures.append((job, result._return_value))
                        parents[job.store].mark_child_failed(job, result._return_value)
                first_index += len(batch)
                returns.append(results)
        except BaseException as exc:  # the sweep itself was stopped (Ctrl-C, SIGTERM) or its launcher broke
            for parent in parents.values():
                parent.close("KILLED" if isinstance(exc, (KeyboardInterrupt, Terminated)) else "FAILED")
            raise
        for store, parent in parents.items():
            parent.close("FAILED" if any(job.store == store for job, _ in failures) else "FINISHED")
        if failures:
            lines = "\n".join(f"  {' '.join(job.overrides)} (job folder {job.jobdir.path}): {type(error).__name__}: "
                              f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
                              for job, error in failures)
            raise SweepFailed(f"{len(failures)} of {len(to_launch)} launched jobs failed (the others finished and "
                              f"are recorded; run the sweep again to retry only these):\n{lines}")
        return returns

    def _plan_job(self, overrides: list[str]) -> PlannedJob:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        jobdir = JobDir.for_config(cfg)
        return PlannedJob(overrides, cfg, jobdir, plan(cfg, jobdir))


def swept_keys(job_overrides: list[list[str]]) -> list[str]:
    """The override keys whose value differs between jobs, in command-line order."""
    values: dict[str, set[str]] = {}
    for overrides in job_overrides:
        for item in overrides:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]


def swept_values(overrides: list[str], swept: list[str]) -> str:
    return " ".join(item for item in overrides if item.partition("=")[0] in swept)


@contextlib.contextmanager
def failed_results_are_returned() -> Iterator[None]:
    """The submitit launchers wait on their jobs in order with `job.results()`, which raises for a job that died
    without a result; that would abandon every later job of the batch. Inside this block their executors hand
    out jobs whose results() returns a FAILED JobReturn instead."""
    try:
        import submitit
    except ImportError:
        yield
        return
    original = submitit.AutoExecutor

    class Executor(original):  # type: ignore[misc, valid-type]
        def map_array(self, fn, *iterable):
            return [ResultOrFailure(job) for job in super().map_array(fn, *iterable)]

    submitit.AutoExecutor = Executor
    try:
        yield
    finally:
        submitit.AutoExecutor = original


# SLURM job states in which a job may still write its result (squeue/scontrol's JobState)
SLURM_ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                       "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED", "RESV_DEL_HOLD", "STOPPED"}


def slurm_job_state(job_id: str) -> str | None:
    """JobState from `scontrol show job` (which works without accounting, until MinJobAge after the end): the
    state, "GONE" when slurmctld no longer knows the job, None when scontrol cannot be asked."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return "GONE" if "Invalid job id" in shown.stderr else None
    found = re.search(r"JobState=(\S+)", shown.stdout)
    return found.group(1) if found else None


class ResultOrFailure:
    """A submitit job whose results() returns a FAILED JobReturn for a job that ended without a result.

    submitit learns that a SLURM job died from `sacct`; on a cluster without accounting sacct fails, the job's
    state stays UNKNOWN and results() would wait for ever. So while the job is not done, its state is also read
    with scontrol: once SLURM says it ended and no result has appeared within `grace_s`, it counts as failed."""

    def __init__(self, job: Any, poll_s: float = 2.0, grace_s: float = 30.0):
        self.job, self.poll_s, self.grace_s = job, poll_s, grace_s

    def results(self) -> list[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            if type(self.job).__name__ == "SlurmJob":
                ended = self._wait_for_slurm()
                if ended is not None:
                    raise UncompletedJobError(f"SLURM reports the job {ended} and it wrote no result "
                                              f"({self.job.paths.result_pickle})")
            return self.job.results()
        except (FailedJobError, UncompletedJobError) as exc:
            state = getattr(self.job, "state", "UNKNOWN")
            return [JobReturn(status=JobStatus.FAILED,
                              _return_value=RuntimeError(f"job {self.job.job_id} ended {state} without a result: "
                                                         f"{exc}"))]

    def _wait_for_slurm(self) -> str | None:
        """None once the job is done in submitit's eyes; SLURM's end state when it ended without a result."""
        ended_at = None
        while not self.job.done():
            state = slurm_job_state(self.job.job_id)
            if state is None or state.rstrip("+") in SLURM_ACTIVE_STATES:
                ended_at = None
            elif ended_at is None:
                ended_at = time.time()
            elif time.time() - ended_at > self.grace_s and not self.job.paths.result_pickle.exists():
                return state
            time.sleep(self.poll_s)
        return None


class SweepRun:
    """The sweep's parent MLflow run in one store and experiment."""

    SIGNATURE_TAG = "gqbench.sweep_signature"

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, store: tuple[str | None, str, str], jobs: list[PlannedJob], arguments: Sequence[str],
             swept: list[str], sweep_dir: str, launcher: str) -> "SweepRun":
        uri, experiment, runs_dir = store
        client, experiment_id = open_experiment(uri, experiment, Path(runs_dir))
        signature = sweep_signature(experiment, [job.jobdir.signature for job in jobs])
        found = client.search_runs([experiment_id], filter_string=f"tags.`{cls.SIGNATURE_TAG}` = '{signature}'",
                                   max_results=1)
        launcher_name = launcher.rsplit(".", 1)[-1] or "basic"
        description = (f"Sweep of {len(jobs)} jobs over {', '.join(swept) or 'one configuration'}: "
                       f"`python -m gqbench.sweep -m {' '.join(arguments)}`. Each job is a child run; the job "
                       f"folders are {runs_dir}/jobs/<signature>. Last launched from {socket.gethostname()} with "
                       f"{launcher_name} into {sweep_dir}.")
        tags = {ROLE_TAG: "sweep", cls.SIGNATURE_TAG: signature, DESCRIPTION_TAG: description,
                "sweep_dir": sweep_dir, "launcher": launcher_name, "mlflow.source.name": "gqbench.sweep",
                "mlflow.source.type": "LOCAL"}
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            log.info("MLflow: sweep run %s reopened (%s)", run_id, experiment)
        else:
            name = f"{experiment} sweep: {len(jobs)} jobs" + (f" over {', '.join(swept)}" if swept else "")
            run_id = client.create_run(experiment_id, run_name=name[:250], tags={}).info.run_id
            log.info("MLflow: sweep run %s created (%s)", run_id, experiment)
        from mlflow.entities import Param, RunTag

        existing = client.get_run(run_id).data.params
        params = {"sweep.arguments": " ".join(arguments)[:6000], "sweep.jobs": str(len(jobs)),
                  **{f"swept.{key.lstrip('+~')}": ",".join(dict.fromkeys(item.partition("=")[2] for job in jobs
                                                            for item in job.overrides
                                                            if item.partition("=")[0] == key))[:6000]
                     for key in swept}}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items() if k not in existing],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        return cls(client, run_id)

    def overrides_for(self, job: PlannedJob, swept: list[str]) -> list[str]:
        values = swept_values(job.overrides, swept).replace("'", "")
        return [f"tracking.parent_run_id={self.run_id}", f"tracking.swept='{values}'"]

    def mark_child_failed(self, job: PlannedJob, error: BaseException) -> None:
        """A job that died without recording itself leaves its run RUNNING: close it as FAILED with the reason.
        (A job that raised has already done so; its run is left as it is.)"""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        id_file = job.jobdir.run_id_file(experiment_id)
        if not id_file.exists():
            return
        run_id = id_file.read_text().strip()
        try:
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, "error", str(error)[:4000])
                self.client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - best effort: the job's own record is what matters
            log.warning("MLflow: could not mark run %s failed (%s)", run_id, exc)

    def close(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001 - never hide why the sweep ended
            log.warning("MLflow: could not close sweep run %s (%s)", self.run_id, exc)


def sweep_signature(experiment: str, job_signatures: list[str]) -> str:
    payload = experiment + "\n" + "\n".join(sorted(set(job_signatures)))
    return hashlib.sha1(payload.encode()).hexdigest()[:12]
