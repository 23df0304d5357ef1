"""A private single-node SLURM cluster with accounting, for the tests (recipe: shared/research/machine-notes §5).

Everything lives under one folder: its own munge key and socket, MariaDB data and socket, slurmdbd, slurmctld and
slurmd on free ports picked at start, so it never touches a system SLURM. `stop()` ends every daemon it started,
by the PID it recorded, in reverse order. Needs root (slurmd runs jobs as the submitting user) and the Debian
packages slurmctld slurmd slurm-client munge slurmdbd mariadb-server (`.ci/run` installs them).

    python tests/slurm_cluster.py /tmp/cluster   # starts one and prints `export SLURM_CONF=...`; Ctrl-C stops it
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sacctmgr", "sbatch", "sacct", "squeue", "scancel", "sinfo")
CLUSTER_NAME = "gqbenchtest"


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "the private SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return ("SLURM/munge/MariaDB binaries missing: " + ", ".join(missing) + " (apt-get install slurmctld slurmd "
                "slurm-client munge slurmdbd mariadb-server; .ci/run does)")
    return None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None, accounting: bool = True):
        self.root = Path(root).resolve()
        self.accounting = accounting  # False: no slurmdbd/MariaDB, so `sacct` fails as on such clusters
        self.cpus = cpus or os.cpu_count() or 1
        self.pids: list[tuple[str, int]] = []
        self.env = dict(os.environ)

    # -- layout ----------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def conf(self) -> Path:
        return self.path("etc", "slurm.conf")

    def _write_configs(self, ports: list[int]) -> None:
        ctld, slurmd, dbd, db = ports
        run, munge_socket = self.path("run"), self.path("run", "munge.socket.2")
        self.conf.write_text("\n".join([
            f"ClusterName={CLUSTER_NAME}", "SlurmctldHost=localhost", f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}", f"StateSaveLocation={self.path('state')}",
            f"SlurmdSpoolDir={self.path('spool')}", f"SlurmctldPidFile={run}/slurmctld.pid",
            f"SlurmdPidFile={run}/slurmd.pid", f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={self.path('log', 'slurmd.log')}", "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none", *([
                "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                f"AccountingStoragePort={dbd}",
                # with a private munged, the link to slurmdbd finds the socket only here (machine-notes §5, error 3)
                f"AccountingStoragePass={munge_socket}"] if self.accounting
                else ["AccountingStorageType=accounting_storage/none"]), "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            "ReturnToService=2", "MpiDefault=none", "SwitchType=switch/none", "MinJobAge=300",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=8000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        dbd_conf = self.path("etc", "slurmdbd.conf")
        dbd_conf.write_text("\n".join([
            "DbdHost=localhost", f"DbdPort={dbd}", "SlurmUser=root", "AuthType=auth/munge",
            f"AuthInfo=socket={munge_socket}", f"PidFile={run}/slurmdbd.pid",
            f"LogFile={self.path('log', 'slurmdbd.log')}", "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1", f"StoragePort={db}", "StorageUser=slurm", "StoragePass=slurmpw",
            "StorageLoc=slurm_acct_db", ""]))
        dbd_conf.chmod(0o600)
        self.db_port = db

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "SlurmCluster":
        for sub in ("munge", "run", "state", "spool", "log", "etc", "mysql"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        self.path("munge").chmod(0o700)
        self.root.chmod(0o755)
        self.path("run").chmod(0o755)  # munged refuses a socket in a folder others cannot traverse
        self._write_configs(free_ports(4))
        self.env["SLURM_CONF"] = str(self.conf)
        run = self.path("run")
        try:
            self._run(["mungekey", "--create", f"--keyfile={self.path('munge', 'munge.key')}", "--force"])
            self._daemon("munged", [_which("munged"), f"--socket={run}/munge.socket.2",
                                    f"--key-file={self.path('munge', 'munge.key')}", f"--pid-file={run}/munged.pid",
                                    f"--log-file={self.path('log', 'munged.log')}",
                                    f"--seed-file={self.path('munge', 'munged.seed')}"], run / "munged.pid")
            if self.accounting:
                self._run(["mariadb-install-db", "--user=root", f"--datadir={self.path('mysql', 'data')}",
                           "--auth-root-authentication-method=socket", "--skip-test-db"])
                mariadb = subprocess.Popen(
                    [_which("mariadbd"), "--user=root", f"--datadir={self.path('mysql', 'data')}",
                     f"--socket={run}/mysqld.sock", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                     f"--pid-file={run}/mysqld.pid", f"--log-error={self.path('log', 'mariadb.err')}",
                     "--innodb-buffer-pool-size=32M"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                self.pids.append(("mariadbd", mariadb.pid))
                self._wait(lambda: self._ok(["mariadb", "-S", f"{run}/mysqld.sock", "-u", "root", "-e", "SELECT 1"]),
                           timeout, "MariaDB to accept connections")
                self._run(["mariadb", "-S", f"{run}/mysqld.sock", "-u", "root", "-e",
                           "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; "
                           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"])
                self._daemon("slurmdbd", [_which("slurmdbd")], run / "slurmdbd.pid")
                self._wait(lambda: self._ok(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])
                           or CLUSTER_NAME in self._out(["sacctmgr", "-n", "list", "cluster", "format=cluster"]),
                           timeout, "slurmdbd to register the cluster")
            self._daemon("slurmctld", [_which("slurmctld"), "-f", str(self.conf)], run / "slurmctld.pid")
            self._daemon("slurmd", [_which("slurmd"), "-f", str(self.conf), "-N", "localhost"], run / "slurmd.pid")
            self._wait(lambda: self._out(["sinfo", "-h", "-o", "%t"]).strip() == "idle", timeout,
                       "the node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel every job, then end the daemons by PID, last started first. Job steps outlive slurmd, so any
        process still carrying this cluster's SLURM_CONF is killed last."""
        if self.pids:
            jobs = self._out(["squeue", "-h", "-o", "%i"]).split()
            if jobs:
                subprocess.run([_which("scancel"), *jobs], env=self.env, capture_output=True, timeout=60)
                deadline = time.time() + 30
                while time.time() < deadline and self._out(["squeue", "-h", "-o", "%i"]).split():
                    time.sleep(0.5)
        for name, pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 15
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        for pid in self._processes_of_this_cluster():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _processes_of_this_cluster(self) -> list[int]:
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------------------------
    def logs(self, tail: int = 40) -> str:
        out = []
        for log in sorted(self.path("log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def _run(self, args: list[str]) -> str:
        done = subprocess.run([_which(args[0]), *args[1:]], env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def _ok(self, args: list[str]) -> bool:
        return subprocess.run([_which(args[0]), *args[1:]], env=self.env, capture_output=True,
                              timeout=60).returncode == 0

    def _out(self, args: list[str]) -> str:
        return subprocess.run([_which(args[0]), *args[1:]], env=self.env, capture_output=True, text=True,
                              timeout=60).stdout

    def _daemon(self, name: str, args: list[str], pid_file: Path, timeout: float = 30) -> None:
        """Start a daemon that forks into the background and writes its PID file; record the PID."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{name} did not start ({done.returncode}): {done.stderr[-2000:]}\n{self.logs()}")
        self._wait(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), timeout,
                   f"{name} to write {pid_file}")
        self.pids.append((name, int(pid_file.read_text().strip())))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def private_folder() -> Path:
    """A fresh folder under /tmp whose every ancestor others can traverse: munged refuses a socket below a 0700
    folder (pytest's tmp_path is below /tmp/pytest-of-<user>, which is 0700)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="gqbench-slurm-", dir="/tmp"))


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]) if len(sys.argv) > 1 else private_folder())
    started = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `with` stops the daemons on kill too
    with cluster:
        print(f"cluster up in {time.time() - started:.1f} s\nexport SLURM_CONF={cluster.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
