"""The link's reader (``redis_link.reader_for``) turns every error reply into what redis-py's own
parsers make of the same bytes: the same class, the same text, the same status code, and the
same choice between an error handed to the caller and one raised as a lost connection.

Differential, reply by reply: the bytes go to the link's reader and to redis-py's hiredis parser
and its pure-Python RESP2 parser, each reading from a stream as on a real connection.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder

from broker.stores.redis_link import _MORE, _connection_error, reader_for

REDIRECTS = ("ASK", "MOVED")


def _error_lines() -> list[str]:
    """Every error redis-py maps to a class of its own, and some it does not."""
    lines = []
    for code, mapped in BaseParser.EXCEPTION_CLASSES.items():
        # a redirection names a slot and a node; anything else, a sentence
        lines.append(f"{code} 3999 127.0.0.1:6381" if code in REDIRECTS else f"{code} went wrong")
        if isinstance(mapped, dict):
            lines.extend(f"{code} {text}" for text in mapped)
    return [
        *lines,
        "NOSCRIPT No matching script. Please use EVAL.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "ERR Error running script (call to f_x): @user_script:1: boom",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "LOADING Redis is loading the dataset in memory",
        "MASTERDOWN Link with MASTER is down",
        "BUSY Redis is busy running a script.",
        "NOPERM this user has no permissions",
        "refused bad",
        "UNKNOWN",
    ]


def _encoder(decode: bool) -> Encoder:
    return Encoder("utf-8", "strict", decode)


def _redis_py(parser_class: type[Any], data: bytes, decode: bool) -> tuple[str, Any]:
    """What redis-py's parser makes of ``data``: ("reply", value) or ("raised", exception)."""

    async def read() -> tuple[str, Any]:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        parser = parser_class(socket_read_size=65536)
        parser.on_connect(SimpleNamespace(_reader=stream, encoder=_encoder(decode)))
        try:
            return "reply", await parser.read_response()
        except Exception as exc:  # what it raised is what is compared
            return "raised", exc

    return asyncio.run(read())


def _link(data: bytes, decode: bool) -> tuple[str, Any]:
    reader = reader_for(SimpleNamespace(encoder=_encoder(decode)))  # type: ignore[arg-type]
    reader.feed(data)
    try:
        reply = reader.gets()
    except Exception as exc:  # the link fails with it, as redis-py raises it
        return "raised", exc
    assert reply is not _MORE
    lost = _connection_error(reply)
    return ("raised", lost) if lost is not None else ("reply", reply)


def _shape(value: Any) -> Any:
    if isinstance(value, BaseException):
        return (type(value), value.args, getattr(value, "status_code", None))
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return value


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("line", _error_lines())
def test_an_error_reply_becomes_what_redis_py_makes_of_it(line: str, decode: bool) -> None:
    alone, nested = f"-{line}\r\n".encode(), f"*2\r\n:1\r\n-{line}\r\n".encode()
    # The pure-Python parser raises a connection-class error wherever it sits in an array; the
    # hiredis one (redis-py's parser whenever hiredis is installed, as it is here) only when it
    # comes first: the link follows the hiredis parser.
    for data, parsers in ((alone, (_AsyncHiredisParser, _AsyncRESP2Parser)),
                          (nested, (_AsyncHiredisParser,))):  # fmt: skip
        ours = _link(data, decode)
        for parser_class in parsers:
            how, value = _redis_py(parser_class, data, decode)
            assert (ours[0], _shape(ours[1])) == (how, _shape(value)), (parser_class, data)


def test_an_error_first_in_an_array_that_means_a_lost_connection_is_raised() -> None:
    how, value = _link(b"*2\r\n-LOADING not yet\r\n:1\r\n", decode=False)
    assert how == "raised" and type(value).__name__ == "BusyLoadingError"
    assert _redis_py(_AsyncHiredisParser, b"*2\r\n-LOADING not yet\r\n:1\r\n", False)[0] == how


@pytest.mark.parametrize("decode", [False, True])
def test_replies_that_are_not_errors_read_the_same(decode: bool) -> None:
    nested = b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n:2\r\n$1\r\ny\r\n"
    cut_utf8 = b"$4\r\n\xc3\xa9t\xc3\r\n"  # fails to decode, alike
    for data in (
        b"+OK\r\n",
        b":42\r\n",
        b"$3\r\nabc\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        nested,
        cut_utf8,
    ):
        ours = _link(data, decode)
        theirs = _redis_py(_AsyncHiredisParser, data, decode)
        assert (ours[0], _shape(ours[1])) == (theirs[0], _shape(theirs[1])), data
