"""What a stalled test is waiting for: the stacks of the asyncio tasks, printed once.

pytest-timeout fails a test that hangs and prints every thread's stack, but a
test stuck in ``await`` shows only an event loop idle in ``select``. After
``STALL_S`` a timer thread prints the pending tasks of every running event
loop, each with the line it waits on, so the hang names itself. Reading the
loop's task set from another thread is unsafe in general; here the loop is
idle, and this is diagnostics only.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any

# The slowest test (the drill suite) takes minutes; conftest takes at most half the timeout.
STALL_S = 300.0


def print_pending_tasks(name: str, after_s: float) -> None:
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    running = [loop for loop in loops if loop.is_running()]
    print(f"\n{name} has run for {after_s:g} s; pending asyncio tasks:", file=sys.stderr)
    for loop in running:
        for task in list(asyncio.all_tasks(loop)):
            print(f"- {task.get_name()}:", file=sys.stderr)
            for line in await_chain(task.get_coro()):
                print(f"    {line}", file=sys.stderr)
    sys.stderr.flush()


def await_chain(awaitable: Any) -> list[str]:
    """Where a suspended coroutine waits, outermost first, down to what it awaits."""
    lines = []
    for _ in range(50):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"awaits {awaitable!r}"[:300])
            break
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        if awaitable is None:
            break
    return lines


def stall_timer(name: str, after_s: float = STALL_S) -> threading.Timer:
    timer = threading.Timer(after_s, print_pending_tasks, args=(name, after_s))
    timer.daemon = True
    timer.start()
    return timer
