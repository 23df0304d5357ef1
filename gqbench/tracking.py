"""MLflow tracking for one job: experiment creation that is safe under concurrent first writers, one run per
job (resumed after an interruption), batched metric logging, artifacts.

The default store is sqlite in the project's run folder (`<paths.runs>/mlflow.db`; MLflow's ./mlruns file
store is deprecated and refuses to start since 3.13). A fresh sqlite store hit by several processes at once
corrupts its schema (stack-notes §5), so store and experiment creation happen under an exclusive file lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from .jobdir import JobDir

# mlflow is imported where it is used: it costs seconds, and a sweep whose jobs all finished never needs it

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


SHARED_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "beegfs", "ceph", "fuse.glusterfs",
                      "fuse.sshfs", "panfs", "wekafs")


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path`: the longest mount point above it in /proc/mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    path, best, kind = str(Path(path).resolve()), "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def warn_if_sqlite_on_a_shared_filesystem(uri: str, mounts: str | None = None) -> str | None:
    """sqlite's file locks are unreliable on network filesystems, and many jobs writing one store there corrupt
    it (stack-notes §5): say so, and what to use instead. Returns the warning (None when there is none)."""
    if not uri.startswith("sqlite:///"):
        return None
    kind = filesystem_type(Path(uri.removeprefix("sqlite:///")).parent, mounts)
    if kind not in SHARED_FILESYSTEMS:
        return None
    message = (f"the MLflow store {uri} is a sqlite file on a shared filesystem ({kind}); jobs on several nodes "
               "can corrupt it — start `mlflow server` on one host and set tracking.uri=http://HOST:5000")
    log.warning(message)
    return message


def default_tracking_uri(runs_dir: Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def get_or_create_experiment(client: "MlflowClient", name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted in {client.tracking_uri}; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set tracking.experiment=<new name>"
        )
    return experiment.experiment_id


def open_experiment(uri: str | None, experiment: str, runs_dir: Path) -> tuple["MlflowClient", str]:
    """A client on the store (the default sqlite file when `uri` is None) and the experiment's id, created if
    needed. Creating a fresh store or experiment happens under an exclusive file lock in the runs folder."""
    runs_dir = Path(runs_dir).resolve()
    uri = uri or default_tracking_uri(runs_dir)
    artifact_location = (runs_dir / "mlartifacts" / experiment).as_uri() if uri.startswith("sqlite:") else None
    warn_if_sqlite_on_a_shared_filesystem(uri)
    from mlflow.tracking import MlflowClient

    with file_lock(runs_dir / ".mlflow.lock"):
        # the client creates (migrates) a fresh store on construction: that too must happen under the lock
        client = MlflowClient(tracking_uri=uri)
        return client, get_or_create_experiment(client, experiment, artifact_location)


PARENT_TAG = "mlflow.parentRunId"          # MLflow's UI nests a run under this run id
DESCRIPTION_TAG = "mlflow.note.content"    # shown as the run's description
ROLE_TAG = "gqbench.role"                  # "sweep" for a sweep's parent run, "job" for a job's run


def job_runs(runs):
    """The rows of an mlflow.search_runs DataFrame that are jobs, not sweeps' parent runs."""
    column = f"tags.{ROLE_TAG}"
    return runs if column not in runs else runs[runs[column].fillna("job") != "sweep"]


class Tracker:
    """One MLflow run for one job. The job folder keeps the run id so a resumed, requeued or re-evaluated job
    logs into the same run."""

    def __init__(self, uri: str | None, experiment: str, runs_dir: Path, jobdir: "JobDir"):
        self.runs_dir = Path(runs_dir).resolve()
        self.uri = uri or default_tracking_uri(self.runs_dir)
        self.jobdir = jobdir
        self.client, self.experiment_id = open_experiment(self.uri, experiment, self.runs_dir)
        self.run_id: str | None = None

    def start(self, run_name: str, tags: dict[str, str]) -> str:
        """Reopen this job's run in this experiment (unless it was deleted), or create one. `tags` are set on
        either (a re-run may come from another sweep: its parent tag moves to that sweep's run)."""
        id_file = self.jobdir.run_id_file(self.experiment_id)
        previous = id_file.read_text().strip() if id_file.exists() else None
        if previous:
            try:
                run = self.client.get_run(previous)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(previous, status="RUNNING")
                    if "error" in run.data.tags:
                        self.client.delete_tag(previous, "error")
                    self.run_id = previous
                    self.set_tags(tags)
                    log.info("MLflow: reopening run %s", previous)
            except Exception as exc:  # the store was moved or wiped: start a new run
                log.warning("MLflow: cannot reopen run %s (%s); starting a new one", previous, exc)
        if self.run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(self.run_id)
        return self.run_id

    def log_dataset(self, name: str, digest: str, source: Any, context: str) -> None:
        """The run's Dataset column: `source` is an mlflow.data DatasetSource; digest, the data signature."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity()
        self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
        for i in range(0, len(fresh), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=fresh[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_"), float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def record_failure(self, error: str, status: str, tag: str = "error") -> None:
        """Best effort: the store itself may be what failed, and that must not hide the original error."""
        try:
            self.set_tags({tag: error[:4000]})
            self.end(status)
        except Exception as exc:  # noqa: BLE001
            log.error("MLflow: could not record the failure (%s)", exc)

    @classmethod
    def record_failure_of_existing_run(cls, uri: str | None, experiment: str, runs_dir: Path, jobdir: "JobDir",
                                       error: str, status: str, tag: str) -> None:
        """For a rank other than 0: mark the job's run (written by rank 0) as failed, with this rank's error
        under `tag`. Best effort, like record_failure; nothing happens when rank 0 never created the run."""
        try:
            tracker = cls(uri, experiment, runs_dir, jobdir)
            id_file = jobdir.run_id_file(tracker.experiment_id)
            if not id_file.exists():
                return
            tracker.run_id = id_file.read_text().strip()
            tracker.record_failure(error, status, tag=tag)
        except Exception as exc:  # noqa: BLE001
            log.error("MLflow: could not record this rank's failure (%s)", exc)


def silence_mlflow_noise() -> None:
    """Alembic prints its migration log on every fresh store; keep our console readable."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
