"""The agent directory: registering, updating, suspending and removing agents, and their cards.

The admin API and the start-up loader call ``AgentDirectory``; it holds no HTTP. Cards come as a
dict or from a URL through the injected egress-safe fetcher, and are validated (and their
signatures checked) by ``broker.identity.cards`` before anything is stored.
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH

from broker.errors import (
    AgentExistsError,
    AgentNameConfusableError,
    AgentNotFoundError,
    BrokerError,
    EgressDeniedError,
    InvalidAdminRequestError,
    InvalidAgentCardError,
)
from broker.identity.cards import (
    BROKER_BINDING_PATHS,
    BrokerCardRewriter,
    CardVerifier,
    ValidatedCard,
    decode_card_json,
    validate_card,
)
from broker.identity.credentials import is_credential_digest, new_credential
from broker.identity.keys import BrokerKeys
from broker.identity.names import confusable_with, is_agent_name
from broker.outbound.egress import EgressPolicy, check_registered_url
from broker.settings import Settings
from broker.stores.base import AgentRecord, AgentStatus, Stores

__all__ = ["AgentDirectory", "CardFetcher", "DeclarativeCardError"]

log = logging.getLogger("a2a_broker.directory")

CardFetcher = Callable[[str], Awaitable[bytes]]
Source = Literal["api", "declarative"]

# updated_at keys the served-card cache, so every change must move it forward.
_MIN_STAMP_STEP_S = 0.001


class DeclarativeCardError(Exception):
    """A card file (or its ``[agents.<name>]`` entry) cannot be loaded; the message names it."""


class AgentDirectory:
    """Registered agents, their broker credentials and the cards the broker serves for them."""

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        keys: BrokerKeys,
        verifier: CardVerifier,
        fetch_card: CardFetcher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._registry = stores.registry
        self._credentials = stores.credentials
        self._keys = keys
        self._verifier = verifier
        self._fetch_card = fetch_card
        self._clock = clock
        self._public_url = settings.public_url
        self._served_card = BrokerCardRewriter(settings.public_url, keys)
        self._served: dict[str, tuple[float, dict[str, Any]]] = {}
        self._egress = EgressPolicy(settings.egress)

    # --- Admin operations -----------------------------------------------------------------------

    async def register(
        self,
        name: str,
        card: Mapping[str, Any] | None = None,
        card_url: str | None = None,
        source: Source = "api",
    ) -> tuple[AgentRecord, str]:
        """Register a new agent from ``card`` or ``card_url`` (exactly one); return its credential.

        The plaintext credential is returned once and only its digest is stored. Raises
        ``InvalidAdminRequestError`` (bad name or arguments), ``AgentExistsError``, the card
        errors of ``validate_card`` and whatever the fetcher raises.
        """
        check_agent_name(name)
        if await self._registry.get(name) is not None:
            raise AgentExistsError(metadata={"agent": name})
        await self._check_not_confusable(name)
        validated = await self._resolve(card, card_url)
        now = self._clock()
        fresh = AgentRecord(
            name=name, card_json="", source=source, card_url=card_url or "", created_at=now
        )
        record = _with_card(msgspec.structs.replace(fresh, updated_at=now), validated)
        if not await self._registry.create(record):
            raise AgentExistsError(metadata={"agent": name})
        token, digest = new_credential()
        await self._credentials.replace(name, digest)
        log.info("agent %s registered (card signature %s)", name, validated.signature_status)
        return record, token

    async def update(
        self, name: str, card: Mapping[str, Any] | None = None, card_url: str | None = None
    ) -> AgentRecord:
        """Replace the agent's card; its credential, status and source are kept."""
        validated = await self._resolve(card, card_url)
        # Read as late as possible: the store has no compare-and-set, so a status change made
        # between this read and the put would be lost.
        current = await self.get(name)
        changed = msgspec.structs.replace(
            current, card_url=card_url or "", updated_at=self._stamp(current)
        )
        record = _with_card(changed, validated)
        await self._registry.put(record)
        log.info("agent %s card updated (card signature %s)", name, validated.signature_status)
        return record

    async def get(self, name: str) -> AgentRecord:
        """The agent's record; raises ``AgentNotFoundError``."""
        record = await self._registry.get(name)
        if record is None:
            raise AgentNotFoundError(metadata={"agent": name})
        return record

    async def list(self) -> builtins.list[AgentRecord]:
        """Every registered agent, sorted by name."""
        return await self._registry.list()

    async def suspend(self, name: str) -> AgentRecord:
        """Mark the agent suspended; raises ``AgentNotFoundError``."""
        return await self._set_status(name, "suspended")

    async def resume(self, name: str) -> AgentRecord:
        """Mark the agent active again; raises ``AgentNotFoundError``."""
        return await self._set_status(name, "active")

    async def delete(self, name: str) -> None:
        """Revoke the agent's credentials, then remove it; raises ``AgentNotFoundError``."""
        # Revoking first: if the delete then fails, what is left is an agent that cannot log in.
        await self._credentials.revoke_agent(name)
        if not await self._registry.delete(name):
            raise AgentNotFoundError(metadata={"agent": name})
        self._served.pop(name, None)
        log.info("agent %s deleted", name)

    async def rotate_credential(self, name: str) -> str:
        """Issue a new credential, revoking the old one at once; raises ``AgentNotFoundError``."""
        await self.get(name)
        token, digest = new_credential()
        await self._credentials.replace(name, digest)
        log.info("agent %s credential rotated", name)
        return token

    # --- Cards ----------------------------------------------------------------------------------

    async def served_card(self, name: str) -> dict[str, Any]:
        """The card the broker serves for ``name``: rewritten to the broker and broker-signed.

        Cached per (name, updated_at); the dict is shared, so callers must not modify it.
        Raises ``AgentNotFoundError``.
        """
        record = await self.get(name)
        cached = self._served.get(name)
        if cached is not None and cached[0] == record.updated_at:
            return cached[1]
        card = self._served_card(record_card(record), name)
        self._served[name] = (record.updated_at, card)
        return card

    def summary(self, record: AgentRecord) -> dict[str, Any]:
        """The admin API's ``AgentSummary`` of ``record``."""
        return {
            "name": record.name,
            "status": record.status,
            "source": record.source,
            "card_url": record.card_url,
            "jsonrpc_url": record.jsonrpc_url,
            "rest_url": record.rest_url,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "broker_card_url": self.broker_card_url(record.name),
        }

    def broker_card_url(self, name: str) -> str:
        """Where the broker serves the card of agent ``name``."""
        return f"{self._public_url}/agents/{name}{AGENT_CARD_WELL_KNOWN_PATH}"

    # --- Declarative registration ---------------------------------------------------------------

    async def load_declarative(
        self, cards_dir: str | Path | None = None
    ) -> builtins.list[AgentRecord]:
        """Register every ``*.json`` card in ``cards_dir`` (if given) and bind every
        ``[agents.NAME]`` credential; return the card records.

        Cards are named by file stem and registered (or updated in place: existing records keep
        their status and creation time). The credential digest comes from ``[agents.<name>]
        credential_sha256`` and replaces any other credential of that agent; a card without one
        is registered but cannot call the broker (a warning is logged). An ``[agents.NAME]``
        entry with no card is a caller-only identity, with or without a ``cards_dir``. Every file
        is checked before any is stored; ``DeclarativeCardError`` names the first file (or
        ``[agents]`` entry) that cannot be loaded.
        """
        files = await asyncio.to_thread(_card_files, Path(cards_dir)) if cards_dir else []
        loaded = [(path.stem, await self._load_file(path)) for path in files]
        card_names = [path.stem for path in files]
        for name in sorted(set(self._settings.agents) - set(card_names)):
            self._check_caller_only(name, card_names)
        await self._check_declared_names(card_names)
        records = [await self._store_declared(name, *found) for name, found in loaded]
        for name in sorted(set(self._settings.agents) - set(card_names)):
            await self._bind_caller_only(name)
        return records

    def _check_caller_only(self, name: str, card_names: builtins.list[str]) -> None:
        """Refuse a name no agent could have; warn where the entry looks like a mistake."""
        if not is_agent_name(name):
            raise DeclarativeCardError(f"[agents.{name}]: not a valid agent name")
        if not self._declared_digest(name):
            log.warning("[agents.%s] has no credential_sha256: the entry does nothing", name)
        close = difflib.get_close_matches(name, card_names, n=1)
        if close:
            log.warning(
                "[agents.%s] has no card in cards_dir, so it is a caller-only identity; did you"
                " mean [agents.%s] (the card %s.json)?",
                name,
                close[0],
                close[0],
            )

    async def _bind_caller_only(self, name: str) -> None:
        """An ``[agents.NAME]`` entry without a card: an identity that calls but is not called."""
        digest = self._declared_digest(name)
        if digest:
            await self._credentials.replace(name, digest)
            log.info("caller-only identity %s configured (no card, not a target)", name)

    async def _load_file(self, path: Path) -> tuple[ValidatedCard, str]:
        if not is_agent_name(path.stem):
            raise DeclarativeCardError(f"{path}: the file name is not a valid agent name")
        digest = self._declared_digest(path.stem)
        return await self._validate_file(path), digest

    async def _store_declared(
        self, name: str, validated: ValidatedCard, digest: str
    ) -> AgentRecord:
        existing = await self._registry.get(name)
        base = existing or AgentRecord(name=name, card_json="", created_at=self._clock())
        changed = msgspec.structs.replace(
            base, source="declarative", card_url="", updated_at=self._stamp(existing)
        )
        record = _with_card(changed, validated)
        await self._registry.put(record)
        if digest:
            await self._credentials.replace(name, digest)
        else:
            log.warning(
                "agent %s has no [agents.%s] credential_sha256: unless it was given a credential"
                " through the admin API, it cannot call the broker",
                name,
                name,
            )
        return record

    def _declared_digest(self, name: str) -> str:
        declared = self._settings.agents.get(name)
        digest = declared.credential_sha256.strip().lower() if declared else ""
        if digest and not is_credential_digest(digest):
            raise DeclarativeCardError(
                f"[agents.{name}] credential_sha256 is not a SHA-256 hex digest"
            )
        return digest

    async def _validate_file(self, path: Path) -> ValidatedCard:
        limit = self._settings.registry.max_card_bytes
        try:
            raw = await asyncio.to_thread(_read_limited, path, limit)
        except OSError as exc:
            raise DeclarativeCardError(f"{path}: cannot read the file") from exc
        try:
            validated = validate_card(decode_card_json(raw), self._verifier)
            await self._check_interfaces(validated)
        except BrokerError as exc:
            raise DeclarativeCardError(f"{path}: {_describe(exc)}") from exc
        return validated

    # --- Internals ------------------------------------------------------------------------------

    async def _resolve(self, card: Mapping[str, Any] | None, card_url: str | None) -> ValidatedCard:
        if (card is None) == (card_url is None):
            raise InvalidAdminRequestError("Give exactly one of 'card' and 'card_url'.")
        if card_url is None:
            validated = validate_card(card, self._verifier)
        else:
            parts = urlsplit(card_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidAdminRequestError("'card_url' must be an absolute http(s) URL.")
            await check_registered_url(self._egress, card_url)
            raw = await self._fetch_card(card_url)
            validated = validate_card(decode_card_json(raw), self._verifier)
        await self._check_interfaces(validated)
        return validated

    async def _check_interfaces(self, validated: ValidatedCard) -> None:
        """Refuse now a card whose agent the broker would refuse to call (egress, 0018)."""
        issues = []
        for i, iface in enumerate(validated.card_json.get("supportedInterfaces", [])):
            url = str(iface.get("url", ""))
            if iface.get("protocolBinding") not in BROKER_BINDING_PATHS:
                continue  # never called
            try:
                await check_registered_url(self._egress, url)
            except EgressDeniedError as err:
                issues.append({"field": f"supportedInterfaces[{i}].url", "message": err.message})
        if issues:
            raise InvalidAgentCardError(
                "The agent card points at an address the broker's egress rules forbid.",
                data={"errors": issues},
            )

    async def _check_not_confusable(self, name: str) -> None:
        existing = [record.name for record in await self._registry.list()]
        other = confusable_with(name, existing)
        if other is not None:
            raise AgentNameConfusableError(
                f"The name {name!r} looks like {other!r}, an agent already registered.",
                metadata={"agent": name, "confusableWith": other},
            )

    async def _check_declared_names(self, names: builtins.list[str]) -> None:
        existing = [record.name for record in await self._registry.list()]
        for i, name in enumerate(names):
            other = confusable_with(name, [*existing, *names[:i]])
            if other is not None:
                raise DeclarativeCardError(
                    f"card {name!r} looks like {other!r}, another agent (AGENT_NAME_CONFUSABLE)"
                )

    async def _set_status(self, name: str, status: AgentStatus) -> AgentRecord:
        record = await self._registry.set_status(name, status, self._clock())
        if record is None:
            raise AgentNotFoundError(metadata={"agent": name})
        log.info("agent %s is now %s", name, status)
        return record

    def _stamp(self, existing: AgentRecord | None) -> float:
        now = self._clock()
        if existing is None:
            return now
        return max(now, existing.updated_at + _MIN_STAMP_STEP_S)


def check_agent_name(name: object) -> None:
    """Raise ``InvalidAdminRequestError`` unless ``name`` is a valid agent name."""
    if not is_agent_name(name):
        raise InvalidAdminRequestError(
            "Agent names are 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter"
            " or digit."
        )


def record_card(record: AgentRecord) -> dict[str, Any]:
    """The validated upstream card (A2A 1.0 ProtoJSON) stored in ``record``."""
    card: dict[str, Any] = msgspec.json.decode(record.card_json)
    return card


def _with_card(record: AgentRecord, validated: ValidatedCard) -> AgentRecord:
    return msgspec.structs.replace(
        record,
        card_json=msgspec.json.encode(validated.card_json).decode("utf-8"),
        jsonrpc_url=validated.jsonrpc_url,
        rest_url=validated.rest_url,
    )


def _card_files(folder: Path) -> builtins.list[Path]:
    if not folder.is_dir():
        raise DeclarativeCardError(f"cards folder {folder} does not exist")
    return sorted(folder.glob("*.json"))


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        raw = file.read(limit + 1)
    if len(raw) > limit:
        raise DeclarativeCardError(f"{path}: the card is larger than {limit} bytes")
    return raw


def _describe(exc: BrokerError) -> str:
    errors = (exc.data or {}).get("errors", [])
    found = "; ".join(f"{e['field'] or '(card)'}: {e['message']}" for e in errors)
    return f"{exc.message} {found}".strip()
