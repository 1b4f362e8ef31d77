"""Freezing the start-up heap: what lives then leaves the collector's scans; later garbage
is still collected. Run in a child interpreter: freezing this test process would keep
every test's objects out of the collector's reach."""

from __future__ import annotations

import subprocess
import sys

import orjson

CHILD = """
import gc, sys, weakref
import orjson
from failsoft.server.heap import freeze_startup_heap

class Node:
    pass

kept = Node()
kept.me = kept  # a cycle alive at start-up: frozen, never scanned again
frozen = freeze_startup_heap()
later = Node()
later.me = later  # garbage made after start-up, in a cycle only the collector frees
gone = weakref.ref(later)
del later
gc.collect()
sys.stdout.write(orjson.dumps({
    "frozen": frozen,
    "kept_tracked_but_frozen": gc.is_tracked(kept),
    "later_collected": gone() is None,
    "threshold": gc.get_threshold(),
}).decode())
"""


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    seen = orjson.loads(done.stdout)
    assert seen["frozen"] > 1_000  # modules, classes, functions: the start-up heap
    assert seen["kept_tracked_but_frozen"] is True
    assert seen["later_collected"] is True
    assert seen["threshold"][0] > 0  # the collector still runs for what comes later


EXIT = """
import datasketches
from failsoft.server.heap import freeze_startup_heap, thaw_heap

class Sketches:
    pass

held = Sketches()
held.me = held  # a cycle holding a native sketch, alive at start-up
held.sketch = datasketches.kll_doubles_sketch(200)
freeze_startup_heap()
thaw_heap()  # on the way out, as serve_on_socket does
"""


def test_a_thawed_heap_exits_without_native_leak_reports() -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXIT], capture_output=True, text=True, timeout=60, check=True
    )
    assert "leaked" not in done.stderr, done.stderr[:500]
