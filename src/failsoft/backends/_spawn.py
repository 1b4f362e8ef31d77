"""Starting one worker process: on a private socket, one at a time.

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

__all__ = ["spawn_worker"]

_spawn_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


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
                env={**os.environ, "FAILSOFT_REPLICA": replica},
            )
        finally:
            # The worker owns the socket now: when it dies, connects are refused at once.
            listener.close()
