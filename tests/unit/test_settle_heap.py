"""The broker freezes its start-up heap, so full collections no longer walk it (decision 0011)."""

from __future__ import annotations

import gc

from broker.http.app import GC_THRESHOLDS, settle_heap


def test_settle_heap_freezes_what_exists_and_makes_young_collections_rarer() -> None:
    before = gc.get_threshold()
    # From the interpreter's defaults: an in-process app started earlier in the session has
    # already settled the heap (its lifespan calls settle_heap) and left its thresholds set.
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the libraries' and the runtime's objects
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
