"""The garbage collector's settings for a long-running server whose loaded config stays.

The loaded configuration is frozen out of the collector's sight: full collections (which
hold every thread) then scan only what came after; freezing stops no object from being
freed by its reference count. Young collections run every YOUNG_THRESHOLD allocations
instead of Python's 700: a push at thousands of files allocates tens of thousands of
objects, and every young collection walks all young containers (the per-file indexes a
push copies), so at 700 a one-file push spent as long in the collector as in its work.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect, freeze what survives, and space young collections out."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
