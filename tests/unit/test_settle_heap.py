"""The broker freezes its start-up heap, so full collections no longer walk it (decision 0011)."""

from __future__ import annotations

import gc

from broker.http.app import GC_THRESHOLDS, settle_heap


def test_settle_heap_freezes_what_exists_and_makes_young_collections_rarer() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the libraries' and the runtime's objects
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
