"""A response cycle's head waits for its body (``broker.http.one_write``): a unary answer is one
write, a head alone still leaves within the loop turn, and nothing is reordered or lost."""

from __future__ import annotations

import asyncio

from broker.http.one_write import HeadWithBody


class Wire:
    """A transport that keeps each write (a vectored write as its pieces, in one entry)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pieces: list[tuple[bytes, ...]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.pieces.append(tuple(pieces))
        self.writes.append(b"".join(pieces))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _cycle() -> tuple[Wire, HeadWithBody]:
    wire = Wire()
    return wire, HeadWithBody(wire, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_a_unary_answer_leaves_in_one_write() -> None:
    wire, cycle = _cycle()
    cycle.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    cycle.write(b"{}")
    assert wire.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert len(wire.writes) == 1


async def test_a_stream_s_head_leaves_by_the_end_of_the_turn_and_events_follow_in_order() -> None:
    wire, cycle = _cycle()
    cycle.write(b"HEAD")
    assert wire.writes == []
    await asyncio.sleep(0)
    assert wire.writes == [b"HEAD"]
    cycle.write(b"event 1")
    cycle.write(b"event 2")
    assert wire.writes == [b"HEAD", b"event 1", b"event 2"]


async def test_a_large_body_is_written_beside_the_head_uncopied() -> None:
    wire, cycle = _cycle()
    body = b"x" * (1 << 20)
    cycle.write(b"HEAD")
    cycle.write(body)
    assert wire.pieces == [(b"HEAD", body)] and wire.pieces[0][1] is body


async def test_closing_writes_the_held_head_first_and_a_closed_wire_gets_nothing() -> None:
    wire, cycle = _cycle()
    cycle.write(b"HEAD")
    cycle.close()
    assert wire.writes == [b"HEAD"] and wire.closed
    wire, cycle = _cycle()
    cycle.write(b"HEAD")
    wire.closed = True  # the connection went away within the turn
    await asyncio.sleep(0)
    assert wire.writes == [] and cycle.is_closing()
