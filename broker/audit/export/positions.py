"""Where the exporter durably keeps, per sink and per replica chain, the last exported seq.

A position is saved only after the sink acknowledged every record up to it, so after a restart
the exporter resumes right after the last acknowledged record. Position 0 means nothing of that
chain was exported yet (chains start at seq 1).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

import msgspec

from broker.audit.export.errors import PositionStoreError
from broker.settings import StoreSettings
from broker.stores.redis_client import REDIS_FAILURES, RedisClient, open_redis, open_url

_positions_decoder = msgspec.json.Decoder(dict[str, dict[str, int]])


class PositionStore(ABC):
    """Durable export positions. Every method raises ``PositionStoreError`` on failure."""

    @abstractmethod
    async def load(self, sink: str, replica: str) -> int:
        """The last seq of ``replica`` that ``sink`` acknowledged; 0 if none."""

    @abstractmethod
    async def save(self, sink: str, replica: str, seq: int) -> None:
        """Durably record ``seq`` as acknowledged; once this returns, a crash keeps it."""

    async def aclose(self) -> None:  # noqa: B027 - stores without resources need not override
        """Release connections."""


class FilePositionStore(PositionStore):
    """One JSON file ``{sink: {replica: seq}}``, replaced atomically on every save.

    A save writes a temporary file beside it, fsyncs it, renames it over the old one and fsyncs
    the directory, so a crash leaves either the old or the new positions, never a torn file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._positions: dict[str, dict[str, int]] | None = None
        self._lock = asyncio.Lock()

    async def load(self, sink: str, replica: str) -> int:
        positions = await self._loaded()
        return positions.get(sink, {}).get(replica, 0)

    async def save(self, sink: str, replica: str, seq: int) -> None:
        async with self._lock:
            positions = await self._loaded()
            updated = {**positions, sink: {**positions.get(sink, {}), replica: seq}}
            try:
                await asyncio.to_thread(self._write, msgspec.json.encode(updated))
            except OSError as exc:
                raise PositionStoreError(f"cannot save positions to {self.path}: {exc}") from exc
            self._positions = updated

    async def _loaded(self) -> dict[str, dict[str, int]]:
        if self._positions is None:
            self._positions = await asyncio.to_thread(self._read)
        return self._positions

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            return _positions_decoder.decode(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError) as exc:
            # Never silently start over: that would re-send the whole log.
            raise PositionStoreError(f"cannot read positions from {self.path}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        directory = self.path.parent
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


class RedisPositionStore(PositionStore):
    """One Redis string per sink and replica, ``{key}:{sink}:{replica}``, written with SET.

    Durability is Redis's: run it with AOF (``appendfsync everysec`` or stricter) to keep
    positions across a Redis restart.
    """

    def __init__(self, target: str | StoreSettings, key: str, *, timeout_s: float = 2.0) -> None:
        self.key = key
        self._redis: RedisClient = (
            open_url(target, timeout_s=timeout_s)
            if isinstance(target, str)
            else open_redis(target)  # [store] in any redis_mode
        )

    async def load(self, sink: str, replica: str) -> int:
        try:
            value = await self._redis.get(self._name(sink, replica))
        except REDIS_FAILURES as exc:
            raise PositionStoreError(f"cannot read position: {type(exc).__name__}") from exc
        return 0 if value is None else int(value)

    async def save(self, sink: str, replica: str, seq: int) -> None:
        try:
            await self._redis.set(self._name(sink, replica), seq)
        except REDIS_FAILURES as exc:
            raise PositionStoreError(f"cannot save position: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _name(self, sink: str, replica: str) -> str:
        return f"{self.key}:{sink}:{replica}"
