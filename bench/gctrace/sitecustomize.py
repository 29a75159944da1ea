"""Garbage-collection census of a gateway process, for profiling (not a test, not part of
`make bench`).

With ``bench/gctrace`` on ``PYTHONPATH`` and ``BENCH_GC_TRACE=prefix``, the process times
every collection (``gc.callbacks``) and writes, every 2 s, ``<prefix>.<pid>.json``: each full
(oldest-generation) collection as (wall-clock time, milliseconds), the count and total time
of the younger ones, the objects the collector tracks and those frozen. With
``BENCH_GC_NO_FREEZE=1`` the gateway's startup freeze (`bootstrap.freeze_startup_heap`) is
made a no-op, for a before/after comparison. See bench/RESULTS.md (eighth session).
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from typing import Any

_OUT = os.environ.get("BENCH_GC_TRACE")

if _OUT is not None:
    _prefix: str = _OUT
    if os.environ.get("BENCH_GC_NO_FREEZE"):
        gc.freeze = lambda: None
    _stats: dict[str, Any] = {"pid": os.getpid(), "full": [], "young_s": 0.0, "young_n": 0}
    _started = [0.0]

    def _timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took = time.perf_counter() - _started[0]
        if info["generation"] == 2:
            _stats["full"].append((round(time.time(), 3), round(took * 1000, 1)))
        else:
            _stats["young_s"] += took
            _stats["young_n"] += 1

    def _dump() -> None:
        while True:
            time.sleep(2)
            _stats["tracked"] = len(gc.get_objects())
            _stats["frozen"] = gc.get_freeze_count()
            with open(f"{_prefix}.{os.getpid()}.json", "w") as fh:
                json.dump(_stats, fh)

    gc.callbacks.append(_timed)
    threading.Thread(target=_dump, daemon=True, name="gctrace").start()
