"""A worker's environment: what it needs to run, and no secrets."""

from __future__ import annotations

from failsoft.backends._spawn import worker_env

GATEWAY = {
    "PATH": "/usr/bin",
    "HOME": "/home/me",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/srv/models",
    "VIRTUAL_ENV": "/srv/venv",
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "0",
    "FAILSOFT_ADMIN_TOKEN": "secret",
    "FAILSOFT_HOME": "/var/failsoft",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "DATABASE_URL": "postgresql://user:secret@db/failsoft",
}


def test_a_worker_keeps_what_it_needs_to_run() -> None:
    env = worker_env(GATEWAY, "w1")
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/srv/models",
        "VIRTUAL_ENV": "/srv/venv",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "0",
        "FAILSOFT_REPLICA": "w1",
    }


def test_no_secret_reaches_a_worker() -> None:
    env = worker_env(GATEWAY, "w0")
    assert "secret" not in "".join(env.values())
    assert not {name for name in env if name.startswith("FAILSOFT_")} - {"FAILSOFT_REPLICA"}
