"""Policy reload: file edits apply without a restart, on every replica, never a broken file.

``PolicyReloader`` polls the policy file (mtime and size, then a SHA-256 of the text) every
``interval_s``. A changed file that stays the same for one more poll (so a half-written file is
not taken) is validated and compiled off the event loop, and only then made current. A file that
fails is logged with file and line and handed to ``on_error`` (the audit hooks in there); the
last good policy stays. Before a new policy is swapped in, the questions the old one had
answered are answered under the new one off the loop (within ``warm_budget_s``), so a reload
does not stall the event loop with casbin scans.

With a Redis client and a channel, every policy this replica loads from its file is published
as ``{"version", "text"}`` (on a ``ReplicaChannel``), and every replica applies a published text
that matches its version, validates and differs from its own; an invalid text is never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from broker.background import BackgroundTasks
from broker.policy.decision import Verdict
from broker.policy.engine import (
    PolicyEngine,
    PolicySnapshot,
    Question,
    policy_version,
    require_rules,
)
from broker.policy.rules import PolicyError
from broker.stores.redis_client import RedisClient
from broker.stores.replica_channel import ReplicaChannel

ErrorCallback = Callable[[PolicyError], Awaitable[None] | None]
# Called with each new policy applied (from the file or from another replica) and its source.
AppliedCallback = Callable[[PolicySnapshot, str], Awaitable[None] | None]

_log = logging.getLogger("a2a_broker.policy")
# A file modified this recently may change again within the same mtime tick without its stat
# changing (same size), so it is re-read until its mtime is older than this (git's "racy" rule).
_RACY_WINDOW_NS = 2_000_000_000
# After a reload, up to this many of the questions cached under the old policy are answered
# under the new one before it is swapped in (within ``warm_budget_s``).
WARM_QUESTIONS = 1_000


class PolicyMessage(msgspec.Struct, frozen=True):
    """What replicas publish on the policy channel."""

    version: str
    text: str


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(PolicyMessage)


class PolicyReloader:
    """Keeps ``engine`` on the latest good policy of ``path`` (and of the other replicas).

    ``start`` subscribes (when Redis is given) and starts polling; ``stop`` ends both and
    releases the subscription. Also usable as ``async with``. Neither raises for a bad file.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        path: str | Path,
        *,
        interval_s: float = 1.0,
        on_error: ErrorCallback | None = None,
        on_applied: AppliedCallback | None = None,
        redis: RedisClient | None = None,
        channel: str = "",
        warm_budget_s: float = 1.0,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        if redis is not None and not channel:
            raise ValueError("a Redis client needs a channel name")
        self._engine = engine
        self._background = tasks if tasks is not None else BackgroundTasks()
        self._path = Path(path)
        self._interval_s = interval_s
        self._on_error = on_error
        self._on_applied = on_applied
        self._channel = (
            ReplicaChannel(
                redis, channel, self._receive, retry_s=interval_s, tasks=self._background
            )
            if redis is not None
            else None
        )
        self._warm_budget_s = warm_budget_s
        self._stat: tuple[int, int] | None = None
        self._recheck = True
        # The file's last applied state (a version, or a read failure) and one seen once.
        self._file_state: str | None = None
        self._pending: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # One policy change at a time, file or channel, in the order they were noticed.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe to the channel (so no message published after this is missed) and poll."""
        if self._tasks:
            return
        # The engine was loaded from the file: that is the file's applied state. Otherwise the
        # first polls would "settle" the unchanged file and re-apply it over a policy another
        # replica published meanwhile.
        self._file_state = self._file_state or self._engine.version
        if self._channel is not None:
            await self._channel.start()
        self._tasks.append(self._background.spawn(self._poll(), "policy-poll"))

    async def stop(self) -> None:
        """Cancel the background tasks and wait until they have cleaned up."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(
                tasks
            )  # each cleans up in its finally; a cancelled stop() still ends
        if self._channel is not None:
            await self._channel.stop()

    @property
    def _channel_name(self) -> str:
        return self._channel.name if self._channel is not None else ""

    async def __aenter__(self) -> PolicyReloader:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def reload_now(self) -> PolicySnapshot:
        """Re-read and apply the file now (admin API): the current snapshot, or ``PolicyError``."""
        return await self._check_file(force=True)

    async def _poll(self) -> None:
        while True:
            try:
                await self._check_file(force=False)
            except PolicyError:
                pass  # reported by _fail; the last good policy stays
            except Exception:  # a bug must not end reloading for the life of the process
                _log.exception("policy poll failed; the current policy stays")
            await asyncio.sleep(self._interval_s)

    async def _check_file(self, *, force: bool) -> PolicySnapshot:
        async with self._lock:
            try:
                text = await asyncio.to_thread(self._read_if_changed, force)
            except PolicyError as exc:
                await self._fail(exc)
                raise
            if text is None:
                return self._engine.snapshot
            if await self._apply(text, str(self._path)) and self._channel is not None:
                await self._publish(self._engine.snapshot)
            return self._engine.snapshot

    def _read_if_changed(self, force: bool) -> str | None:
        """The file's text when forced, or when it changed and then stayed the same for one more
        poll (an editor may be half-way through writing it); None otherwise.

        A file that cannot be read raises ``PolicyError`` when forced, or once when the failure
        has lasted two polls (an editor may be replacing the file).
        """
        try:
            text = self._read(force)
        except (OSError, UnicodeDecodeError) as exc:
            state = f"cannot read: {exc}"
            if force or self._settled(state):
                raise PolicyError(str(self._path), 0, state) from exc
            return None
        if text is None:
            return None
        version = policy_version(text)
        if force:
            self._file_state, self._pending = version, None
            return text
        return text if self._settled(version) else None

    def _read(self, force: bool) -> str | None:
        """The file's text, or None if its stat is unchanged and its mtime not racy."""
        stat = os.stat(self._path)
        key = (stat.st_mtime_ns, stat.st_size)
        if key == self._stat and not (force or self._recheck or self._pending):
            return None
        text = self._path.read_text(encoding="utf-8")
        self._stat = key
        self._recheck = time.time_ns() - stat.st_mtime_ns < _RACY_WINDOW_NS
        return text

    def _settled(self, state: str) -> bool:
        """True, once, for a new file state (a version or a failure) seen on two polls in a row."""
        if state == self._file_state:
            self._pending = None
            return False
        if state != self._pending:
            self._pending = state
            return False
        self._file_state, self._pending = state, None
        return True

    async def _apply(self, text: str, source: str) -> bool:
        """Validate off the loop, then swap; True if the policy changed.

        Reports and re-raises ``PolicyError``; the current policy then stays.
        """
        if policy_version(text) == self._engine.version:
            return False
        questions = self._engine.hot_questions(WARM_QUESTIONS)
        try:
            snapshot, answers = await asyncio.to_thread(self._compile, text, source, questions)
        except PolicyError as exc:
            await self._fail(exc)
            raise
        self._engine.swap(snapshot, answers)
        warmed = len(answers)
        _log.info(
            "policy %s applied from %s, %d answers warmed", snapshot.version[:12], source, warmed
        )
        await self._applied(snapshot, source)
        return True

    async def _applied(self, snapshot: PolicySnapshot, source: str) -> None:
        if self._on_applied is None:
            return
        try:
            result = self._on_applied(snapshot, source)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _log.exception("policy on_applied callback failed")

    def _compile(
        self, text: str, source: str, questions: list[Question]
    ) -> tuple[PolicySnapshot, dict[Question, Verdict]]:
        """In a worker thread: validate, compile, and re-ask the questions the old policy was
        asked, so the event loop does not pay casbin's scans right after every reload."""
        snapshot = require_rules(self._engine.load_text(text, source))
        return snapshot, snapshot.answer(questions, self._warm_budget_s)

    async def _fail(self, error: PolicyError) -> None:
        _log.error("policy not applied, the last good one stays: %s", error)
        if self._on_error is None:
            return
        try:
            result = self._on_error(error)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _log.exception("policy on_error callback failed")

    async def _publish(self, snapshot: PolicySnapshot) -> None:
        assert self._channel is not None  # noqa: S101 - only called with Redis
        message = _ENCODER.encode(PolicyMessage(version=snapshot.version, text=snapshot.text))
        if not await self._channel.publish(message):
            _log.warning("policy %s applied here but not published", snapshot.version[:12])

    async def _receive(self, data: bytes) -> None:
        """Apply another replica's policy if it is well-formed, matches its version, validates."""
        try:
            message = _DECODER.decode(data)
        except msgspec.DecodeError:
            _log.warning("ignored a malformed message on policy channel %s", self._channel_name)
            return
        if policy_version(message.text) != message.version:
            _log.warning("ignored a policy whose text does not match version %s", message.version)
            return
        async with self._lock:
            with contextlib.suppress(PolicyError):  # reported by _fail
                await self._apply(message.text, f"redis:{self._channel_name}")
