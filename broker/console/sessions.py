"""Console sessions, kept on the server: the cookie holds only a random id.

A session is created by logging in with the admin token and holds its CSRF token and its login
time. It lives in the broker's store (Redis when the store is Redis, so every replica and worker
knows it; this process's memory otherwise), under the SHA-256 of its id: reading the store does
not give anyone a usable cookie. It ends ``session_ttl_s`` after login, after
``idle_timeout_s`` without a request, or at logout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import msgspec
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore

from broker.settings import Settings
from broker.settings_observability import ConsoleSettings
from broker.stores.redis_client import RedisClient, open_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

SESSION_COOKIE = "a2a_console"
LOGIN_COOKIE = "a2a_console_login"  # double-submit CSRF token of the login form
CSRF_FIELD = "csrf_token"


class Session(msgspec.Struct, frozen=True):
    csrf: str
    login_at: float


@dataclass(frozen=True, slots=True)
class Opened:
    """A session and the cookie value that names it."""

    session_id: str
    session: Session


class Sessions:
    def __init__(
        self, store: Store, settings: ConsoleSettings, redis: RedisClient | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._redis = redis  # the client made for the store, closed with it

    @classmethod
    def for_settings(cls, settings: Settings) -> Sessions:
        if settings.store.backend != "redis":
            return cls(MemoryStore(), settings.console)
        # The store's own way to a Redis: any mode (standalone, Sentinel, cluster), TLS, and
        # the ACL credentials from the environment. Litestar's store speaks single-key commands.
        redis = open_redis(settings.store)
        namespace = f"{settings.store.key_prefix}:console-session"
        store = RedisStore(cast("Redis", redis), namespace=namespace)
        return cls(store, settings.console, redis)

    async def create(self) -> Opened:
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), login_at=time.time())
        await self._save(session_id, session)
        return Opened(session_id, session)

    async def get(self, session_id: str | None) -> Session | None:
        """The live session named by the cookie (its idle time restarts), or None."""
        if not session_id:
            return None
        raw = await self._store.get(_key(session_id))
        if raw is None:
            return None
        session = msgspec.json.decode(raw, type=Session)
        if time.time() - session.login_at > self._settings.session_ttl_s:
            await self.drop(session_id)
            return None
        await self._save(session_id, session)
        return session

    async def drop(self, session_id: str | None) -> None:
        if session_id:
            await self._store.delete(_key(session_id))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _save(self, session_id: str, session: Session) -> None:
        left = self._settings.session_ttl_s - (time.time() - session.login_at)
        expires = max(1, int(min(self._settings.idle_timeout_s, left)))
        await self._store.set(_key(session_id), msgspec.json.encode(session), expires_in=expires)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), expected)
