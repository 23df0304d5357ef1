"""gqbench.tracking: where the MLflow store may live."""
from __future__ import annotations


def test_a_sqlite_store_on_a_shared_filesystem_is_warned_about():
    from gqbench.tracking import filesystem_type, warn_if_sqlite_on_a_shared_filesystem

    mounts = "\n".join([
        "overlay / overlay rw 0 0",
        "server:/export /shared nfs4 rw,relatime 0 0",
        "/dev/sdb1 /shared/local ext4 rw 0 0",
        "lustre@tcp:/fs /scratch lustre rw 0 0",
    ])
    assert filesystem_type("/shared/project/runs", mounts) == "nfs4"
    assert filesystem_type("/shared/local/runs", mounts) == "ext4"  # the longest mount point wins
    assert filesystem_type("/sharedother/runs", mounts) == "overlay"  # a prefix of the name is not a parent
    warning = warn_if_sqlite_on_a_shared_filesystem("sqlite:////scratch/me/runs/mlflow.db", mounts)
    assert "shared filesystem (lustre)" in warning and "tracking.uri=http://" in warning
    assert warn_if_sqlite_on_a_shared_filesystem("sqlite:////shared/local/runs/mlflow.db", mounts) is None
    assert warn_if_sqlite_on_a_shared_filesystem("http://host:5000", mounts) is None
