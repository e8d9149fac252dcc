"""The budget ledger's reserve, settle and roll commands in RESP bytes, packed once but for the
reservation ids (decision 0097; the roll, decision 0110).

Every call of one caller to one target reserves with the same script, keys and limits (one
tuple of scopes until the limits are reloaded, decision 0086) and settles with the same script
and keys; its TTL and amounts are the same from call to call of one kind. Only the reservation
id is new each time. Packing the whole ``EVALSHA`` per call formats every argument's length
with hiredis's ``sprintf`` (and checks each argument's type), so here the parts that do not
change are packed once and a call splices its id between them:

- per shard, the script's ``EVALSHA``, its key count and keys (and the reserve's base key);
- per plan of a tuple of scopes, the reserve's limits (``RedisBudgetLedger`` keeps them with the
  plan, which a reload of the limits replaces, so a changed limit is never sent from here);
- per run of numbers (the reserve's TTL and amounts, the settle's amounts), their bytes.

The result is what ``redis_wire.pack`` makes of the whole command, byte for byte (property test:
``tests/property/test_budget_commands_packed.py``). Whatever the fast way cannot pack exactly as
``pack`` does (an id that is not a ``str``, a number that is not an ``int``, as a ``bool`` or an
``IntEnum`` is not) gets ``b""``: the batcher then packs the whole command, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import DataError

from broker.budgets.model import METRICS
from broker.stores.redis_wire import array_header, pack_arguments

# A reserve's command but for its id, TTL and amounts: the bytes before them, and after.
Template = tuple[bytes, bytes]

# At most this many runs of numbers keep their bytes (amounts come from outside: an LLM call's
# worst case); cleared when full.
_NUMBERS_MAX = 4096
_INT = frozenset({int})


class BudgetCommands:
    """The reserve's, settle's and roll's commands for a ledger's shards (``keys`` and ``bases``
    by shard), for a batcher that writes packed calls with ``encoder`` (UTF-8, strict)."""

    def __init__(
        self, encoder: Any, keys: Sequence[Sequence[str]], bases: Sequence[str], *,
        reserve_sha: str, settle_sha: str, roll_sha: str,
    ) -> None:  # fmt: skip
        self._encoder = encoder
        self._reserve_heads = [
            pack_arguments(encoder, ("EVALSHA", reserve_sha, len(two), *two, base))
            for two, base in zip(keys, bases, strict=True)
        ]
        # The roll's command is the reserve's with another script and the ended id before the
        # limits (budget_roll.lua).
        self._roll_heads = [
            pack_arguments(encoder, ("EVALSHA", roll_sha, len(two), *two, base))
            for two, base in zip(keys, bases, strict=True)
        ]
        # EVALSHA, sha, key count, keys, id, amounts.
        self._settle_heads = [
            array_header(4 + len(two) + len(METRICS))
            + pack_arguments(encoder, ("EVALSHA", settle_sha, len(two), *two))
            for two in keys
        ]
        self._reserve_fixed = [4 + len(two) + 2 + len(METRICS) for two in keys]
        self._numbers: dict[tuple[int, ...], bytes] = {}

    def reserve_template(self, shard: int, limits: Sequence[Any]) -> Template | None:
        """What a reserve on ``shard`` with these limit arguments sends before its id (the
        command's first line, its ``EVALSHA``, keys and base) and after its TTL and amounts;
        None if ``pack`` refuses them (the batcher then packs, and fails, each such call)."""
        try:
            tail = pack_arguments(self._encoder, limits)
        except (DataError, UnicodeError):
            return None
        header = array_header(self._reserve_fixed[shard] + len(limits))
        return header + self._reserve_heads[shard], tail

    def roll_template(self, shard: int, limits: Sequence[Any]) -> Template | None:
        """``reserve_template`` for a roll on ``shard`` (``roll``)."""
        try:
            tail = pack_arguments(self._encoder, limits)
        except (DataError, UnicodeError):
            return None
        header = array_header(self._reserve_fixed[shard] + 1 + len(limits))
        return header + self._roll_heads[shard], tail

    def roll(
        self, template: Template | None, reservation_id: Any, numbers: tuple[Any, ...],
        ended_id: Any,
    ) -> bytes:  # fmt: skip
        """The roll of ``template`` (``roll_template``): the new reservation's id, its TTL (ms)
        and amounts in ``numbers``, then the ended reservation's id."""
        if template is None or type(ended_id) is not str:
            return b""
        try:
            ended = ended_id.encode()
        except UnicodeError:
            return b""
        head, tail = template
        ended_arg = b"$%d\r\n%b\r\n" % (len(ended), ended)
        return self._splice(head, reservation_id, numbers, ended_arg + tail)

    def reserve(
        self, template: Template | None, reservation_id: Any, numbers: tuple[Any, ...]
    ) -> bytes:
        """The reserve of ``template``; ``numbers``: its TTL (ms), then its amounts."""
        if template is None:
            return b""
        head, tail = template
        return self._splice(head, reservation_id, numbers, tail)

    def settle(self, shard: int, reservation_id: Any, amounts: tuple[Any, ...]) -> bytes:
        """The settle of ``reservation_id`` on ``shard`` with ``amounts``."""
        return self._splice(self._settle_heads[shard], reservation_id, amounts, b"")

    def _splice(self, head: bytes, text: Any, numbers: tuple[Any, ...], tail: bytes) -> bytes:
        if type(text) is not str or not _INT.issuperset(map(type, numbers)):
            return b""  # not what the fast way packs as ``pack`` does: the batcher packs it
        try:
            encoded = text.encode()  # as hiredis packs a str (UTF-8, strict)
        except UnicodeError:
            return b""  # the batcher's packing raises its own error for it
        packed = self._numbers.get(numbers)
        if packed is None:
            if len(self._numbers) >= _NUMBERS_MAX:
                self._numbers.clear()
            packed = self._numbers[numbers] = pack_arguments(self._encoder, numbers)
        return b"%b$%d\r\n%b\r\n%b%b" % (head, len(encoded), encoded, packed, tail)
