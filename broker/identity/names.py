"""Agent names: what one may be, and when two are too alike to tell apart.

A name is 1-64 characters of ``a-z``, ``0-9``, ``_`` and ``-`` (it is a URL path segment), so
look-alikes from other scripts (U+0435 CYRILLIC SMALL LETTER IE for ``e``) are refused. Within that
alphabet two names are confusable when their skeletons are equal: the skeleton of UTS #39
section 4 (NFD, each character replaced by its prototype in Unicode's confusables.txt, NFD
again), case-folded, since a name is read without regard to case (``0`` has the prototype
``O``). The confusables data this alphabet needs is three mappings of confusables.txt; no PyPI
library computes UTS #39 skeletons (``confusable-homoglyphs`` lists homoglyphs, ``disarm``
keeps digits apart), so they are written here (decision 0018).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

AGENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# confusables.txt (Unicode 15.1), the lines whose source is in the agent-name alphabet:
#   0030 ;	004F ;	MA	# ( 0 → O ) DIGIT ZERO → LATIN CAPITAL LETTER O
#   0031 ;	006C ;	MA	# ( 1 → l ) DIGIT ONE → LATIN SMALL LETTER L
#   006D ;	0072 006E ;	MA	# ( m → rn ) LATIN SMALL LETTER M → LATIN SMALL LETTER R, N
_PROTOTYPES = {"0": "O", "1": "l", "m": "rn"}


def is_agent_name(name: object) -> bool:
    return isinstance(name, str) and AGENT_NAME_RE.fullmatch(name) is not None


def skeleton(name: str) -> str:
    """The case-folded UTS #39 skeleton of ``name``."""
    text = unicodedata.normalize("NFD", name)
    text = "".join(_PROTOTYPES.get(char, char) for char in text)
    return unicodedata.normalize("NFD", text).casefold()


def confusable_with(name: str, existing: Iterable[str]) -> str | None:
    """An existing name (other than ``name`` itself) that ``name`` would be confused with."""
    mine = skeleton(name)
    return next((other for other in existing if other != name and skeleton(other) == mine), None)
