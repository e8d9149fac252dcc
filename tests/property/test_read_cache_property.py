"""The read cache under any interleaving of reads, writes and store answers: nobody is handed an
answer older than the last write made before their read began, and concurrent misses of one key
in one generation cost one store read.

A write here is what a suspension or rotation is: the store changes, then the cache is told
(``forget``, as a write through this process or the control channel does). The store's reads
wait on a gate, so that the test chooses when each answer comes back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.stores.base import AgentRecord
from broker.stores.cache import CachedAgentRegistry
from broker.stores.memory import MemoryAgentRegistry

KEYS = ("a", "b")


class GatedRegistry(MemoryAgentRegistry):
    """Each read takes the record as it is when the read starts, then waits to be released."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[asyncio.Event] = []
        self.reads: list[str] = []
        self.began = asyncio.Event()  # set once a read is waiting to be answered

    async def get(self, name: str) -> AgentRecord | None:
        self.reads.append(name)
        found = await super().get(name)
        gate = asyncio.Event()
        self.waiting.append(gate)
        self.began.set()
        await gate.wait()
        return found


@dataclass
class Reader:
    key: str
    floor: int  # the version of the key when the read began
    task: asyncio.Task[AgentRecord | None]
    misses: bool = field(default=False)


def version(record: AgentRecord | None) -> int:
    assert record is not None
    return int(record.card_json)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.sampled_from(KEYS)),
        st.tuples(st.just("write"), st.sampled_from(KEYS)),
        st.tuples(st.just("answer"), st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("expire"), st.just("")),
        st.tuples(st.just("turn"), st.just("")),
    ),
    max_size=40,
)


async def _play(plan: list[tuple[str, str | int]]) -> None:
    store = GatedRegistry()
    versions = dict.fromkeys(KEYS, 0)
    for key in KEYS:
        await store.put(AgentRecord(name=key, card_json="0"))
    now = [0.0]
    cached = CachedAgentRegistry(store, 1.0, lambda: now[0])
    readers: list[Reader] = []
    for step, arg in plan:
        if step == "read":
            key = str(arg)
            task = asyncio.create_task(cached.get(key))
            readers.append(Reader(key, versions[key], task))
        elif step == "write":
            key = str(arg)
            versions[key] += 1
            await store.put(AgentRecord(name=key, card_json=str(versions[key])))
            cached.forget(key)
        elif step == "answer" and store.waiting:
            store.waiting.pop(int(arg) % len(store.waiting)).set()
        elif step == "expire":
            now[0] += 2.0
        await asyncio.sleep(0)
    for _ in range(1000):  # every read still waiting is answered
        if all(reader.task.done() for reader in readers):
            break
        while store.waiting:
            store.waiting.pop().set()
        await asyncio.sleep(0)
    for reader in readers:
        answer = version(await reader.task)
        # Never older than what the store held when the read began.
        assert answer >= reader.floor, (reader.key, answer, reader.floor)
    # No more store reads than reads begun, and a warm, unchanged key is read from the cache.
    assert len(store.reads) <= len(readers)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_no_reader_gets_an_answer_older_than_its_start(plan: list[tuple[str, str | int]]) -> None:
    asyncio.run(_play(plan))


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.sampled_from(KEYS))
def test_concurrent_misses_in_one_generation_cost_one_read(readers: int, key: str) -> None:
    async def run() -> None:
        store = GatedRegistry()
        await store.put(AgentRecord(name=key, card_json="0"))
        cached = CachedAgentRegistry(store, 1.0, lambda: 0.0)
        tasks = [asyncio.create_task(cached.get(key)) for _ in range(readers)]
        await store.began.wait()  # the shared read has begun
        await asyncio.sleep(0)  # any reader left to start does so now
        while store.waiting:
            store.waiting.pop().set()
        answers = await asyncio.gather(*tasks)
        assert store.reads == [key]
        assert {version(answer) for answer in answers} == {0}

    asyncio.run(run())
