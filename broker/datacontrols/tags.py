"""Tags that travel: the types of data a piece of work has touched, carried hop to hop.

Tags only accumulate along a chain, as authority only narrows: a hop's tags are its parent's
plus what was found (and let through) on this hop. They name types, never values.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.settings_datacontrols import is_type_name


def accumulate(carried: Iterable[str], found: Iterable[str]) -> tuple[str, ...]:
    """The tags of the next hop: the sorted union of ``carried`` and ``found``; never fewer
    than ``carried``. Raises ``ValueError`` for a tag that is not a type name."""
    tags = set(carried)
    tags.update(found)
    bad = sorted(t for t in tags if not is_type_name(t))
    if bad:
        raise ValueError(f"not a type name: {bad[0]!r}")
    return tuple(sorted(tags))


def only_grew(parent: Iterable[str], child: Iterable[str]) -> bool:
    """Whether ``child`` keeps every tag of ``parent``."""
    return set(parent) <= set(child)
