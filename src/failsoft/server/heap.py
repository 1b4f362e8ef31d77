"""The heap after start-up: moved out of the garbage collector's way.

Start-up leaves a few hundred thousand long-lived objects (modules, the
configuration, the models' wrappers, compiled templates). Every full
collection walked them all again: with drift sketches on, those walks were
the gateway's slowest moments (``benchmarks/serve.py --candidate drift``:
p99 26.6 ms, 9.3 ms once they are frozen; ratio to drift off 0.97). ``gc.freeze``
moves what is alive now to a generation the collector never scans; what is
made later is collected as before. ``thaw_heap`` gives it back before the
process exits, so that the interpreter's last collection frees it (native
extensions such as datasketches report whatever is left as leaked).
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_startup_heap", "thaw_heap"]

log = logging.getLogger("failsoft.server")


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, then freeze what is left; how many objects were frozen."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug(
        "start-up heap frozen",
        extra={"objects": frozen, "ms": round((time.perf_counter() - began) * 1000, 1)},
    )
    return frozen


def thaw_heap() -> None:
    """Undo ``freeze_startup_heap`` (on the way out)."""
    gc.unfreeze()
