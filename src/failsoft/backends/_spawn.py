"""Starting one worker process: a private socket, a scrubbed environment, one at a time.

A worker serves on a unix socket (mode 0600, in a directory of mode 0700 that
the gateway owns), so no other local user can reach it around the gateway's
keys and quotas. The gateway binds the socket and hands it over as an
inherited file descriptor.

uvloop's subprocess spawn ignores ``close_fds``: a child inherits every
inheritable descriptor of the parent, not only ``pass_fds``. If two workers
were spawned while both listeners were inheritable, the later one would hold
the earlier one's listener too, and after that worker died its address would
keep accepting connections (in the sibling) that nobody answers. So the listener is created,
inherited and closed under one lock per event loop: at any moment at most one
inheritable listener exists.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import weakref
from collections.abc import Mapping

__all__ = ["spawn_worker", "worker_env"]

# What a worker needs from the environment: finding Python and its packages,
# the locale, temporary and cache directories, and thread and GPU settings of
# the numeric libraries. Nothing else, so no secret (FAILSOFT_ADMIN_TOKEN,
# cloud credentials...) reaches model code.
_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
    }
)
_ENV_PREFIXES = ("LC_", "PYTHON", "OMP_", "MKL_", "OPENBLAS_", "CUDA_")

_spawn_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def worker_env(environ: Mapping[str, str], replica: str) -> dict[str, str]:
    """The environment of a worker: the allowed variables of ``environ``, and its name."""
    env = {
        name: value
        for name, value in environ.items()
        if name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)
    }
    env["FAILSOFT_REPLICA"] = replica
    return env


def _listen_unix(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(1024)
    except BaseException:
        listener.close()
        raise
    return listener


async def spawn_worker(path: str, replica: str) -> asyncio.subprocess.Process:
    """Start a worker listening on a new unix socket at ``path``; stdin is a pipe.

    ``path`` must be in a directory only this user can enter. Raises OSError
    when the socket cannot be made or the process cannot be started.
    """
    loop = asyncio.get_running_loop()
    lock = _spawn_locks.setdefault(loop, asyncio.Lock())
    async with lock:
        listener = _listen_unix(path)
        try:
            listener.set_inheritable(True)
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "failsoft.backends._worker",
                "--fd",
                str(listener.fileno()),
                "--parent",
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(listener.fileno(),),
                env=worker_env(os.environ, replica),
            )
        finally:
            # The worker owns the socket now: when it dies, connects are refused at once.
            listener.close()
