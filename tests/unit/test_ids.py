"""``new_id`` has exactly the form of ``uuid.uuid4().hex``."""

from __future__ import annotations

import os
import re
import uuid

from broker.ids import new_id


def test_new_ids_are_version_4_uuids_in_hex() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", text)
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == text


def test_every_random_bit_varies() -> None:
    seen_set = 0
    seen_clear = (1 << 128) - 1
    for _ in range(2000):
        value = int(new_id(), 16)
        seen_set |= value
        seen_clear &= value
    varying = seen_set & ~seen_clear
    assert bin(varying).count("1") == 122  # 128 bits less version (4) and variant (2)


def test_a_forked_child_makes_none_of_its_parent_s_ids() -> None:
    new_id()  # the parent now holds ids not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, to the parent
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(64)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {new_id() for _ in range(64)}
    assert len(child) == 64 and not child & parent
