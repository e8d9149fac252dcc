"""What the audit commands read: a log (file, folder or Redis), trusted keys, kept checkpoints,
and record filters. Problems raise ``AuditSourceError`` with a message for the operator."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from broker.audit.file_log import FileAuditLog
from broker.audit.log import AuditLog
from broker.audit.records import AuditRecord, KeptCheckpoint
from broker.audit.redis_log import RedisAuditLog
from broker.identity.keys import BrokerKeys, KeyFileError, jwk_thumbprint, load_signing_key

_URL_TIMEOUT_S = 10.0


class AuditSourceError(Exception):
    """A log, key or checkpoint source cannot be used; the message says which and why."""


def is_redis(source: str) -> bool:
    return source.startswith(("redis://", "rediss://", "unix://"))


def open_log(source: str, prefix: str = "a2ab") -> AuditLog:
    """A Redis URL, a folder of ``audit-<replica>.jsonl`` files, or one such file's folder."""
    if is_redis(source):
        return RedisAuditLog(source, prefix)
    path = Path(source)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise AuditSourceError(f"no audit log at {source}")
    return FileAuditLog(path)


def file_lines(path: Path) -> Iterator[bytes]:
    """The lines of an audit file with their newlines (a torn last line has none). They end
    at the first NUL byte: a live file, or one a crash left, has zeros after its records
    (``broker.audit.file_log.ZERO_CHUNK``)."""
    try:
        with path.open("rb") as file:
            for line in file:
                zero = line.find(b"\0")
                if zero >= 0:
                    if zero:
                        yield line[:zero]
                    return
                yield line
    except OSError as exc:
        raise AuditSourceError(f"cannot read {path}: {exc.strerror}") from exc


def load_public_keys(source: str) -> dict[str, Ed25519PublicKey]:
    """Ed25519 keys by kid from a JWKS URL, a JWKS/JWK file, or a PEM key file (the broker's
    private signing key or a public key)."""
    if source.startswith(("http://", "https://")):
        return _keys_from_jwks(_fetch(source), source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditSourceError(f"cannot read key file {source}: {exc.strerror}") from exc
    if "PRIVATE KEY-----" in text:
        try:
            keys = BrokerKeys(load_signing_key(path))
        except KeyFileError as exc:
            raise AuditSourceError(str(exc)) from exc
        return {keys.kid: keys.private_key.public_key()}
    if text.lstrip().startswith("-----BEGIN"):
        return _keys_from_pem(text, source)
    try:
        return _keys_from_jwks(json.loads(text), source)
    except ValueError as exc:
        raise AuditSourceError(f"key file {source} is neither PEM nor JSON") from exc


def _fetch(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response:  # noqa: S310
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise AuditSourceError(f"cannot fetch keys from {url}: {exc}") from exc


def _keys_from_pem(text: str, source: str) -> dict[str, Ed25519PublicKey]:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    key = serialization.load_pem_public_key(text.encode("utf-8"))
    if not isinstance(key, Ed25519PublicKey):
        raise AuditSourceError(f"key file {source} does not hold an Ed25519 public key")
    jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {jwk_thumbprint(jwk): key}


def _keys_from_jwks(data: Any, source: str) -> dict[str, Ed25519PublicKey]:
    jwks = data.get("keys", [data]) if isinstance(data, dict) else []
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        public = {k: jwk[k] for k in ("kty", "crv", "x") if k in jwk}
        key = OKPAlgorithm.from_jwk(public)
        if isinstance(key, Ed25519PublicKey):
            keys[str(jwk.get("kid") or jwk_thumbprint(public))] = key
    if not keys:
        raise AuditSourceError(f"{source} holds no Ed25519 public key")
    return keys


def load_checkpoints(source: str) -> dict[str, KeptCheckpoint]:
    """Kept checkpoints by replica, from inline JSON or a file: one object, a list, or lines."""
    text = source
    if not source.lstrip().startswith(("{", "[")):
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuditSourceError(f"cannot read checkpoint {source}: {exc.strerror}") from exc
    try:
        items = _json_values(text)
        kept = [msgspec.convert(item, KeptCheckpoint) for item in items]
    except msgspec.MsgspecError as exc:
        raise AuditSourceError(f"checkpoint {source} is not valid: {exc}") from exc
    if not kept:
        raise AuditSourceError(f"checkpoint {source} holds no checkpoint")
    return {checkpoint.replica: checkpoint for checkpoint in kept}


def _json_values(text: str) -> list[Any]:
    """One JSON value, a JSON array, or JSON lines (what ``audit checkpoint`` prints)."""
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return [msgspec.json.decode(line) for line in text.splitlines() if line.strip()]
    return data if isinstance(data, list) else [data]


TIME_FORMS = (
    "ISO 8601 (2026-12-01, 2026-12-01T09:30:00Z; UTC unless an offset is given), epoch seconds,"
    " or a time before now (30s, 15m, 1h, 2d, 1w)"
)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time_us(value: str, now: float | None = None) -> int:
    """Epoch microseconds from ISO 8601 (UTC if no offset), epoch seconds, or a duration before
    ``now`` (``30m``, ``1h``, ``2d``...). Raises ``AuditSourceError`` naming the valid forms."""
    text = value.strip()
    ago = _AGO.match(text.lower())
    if ago:
        seconds = float(ago.group(1)) * _UNIT_S[ago.group(2)]
        return int(((time.time() if now is None else now) - seconds) * 1_000_000)
    try:
        return int(float(text) * 1_000_000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditSourceError(f"not a time: {value!r}; use {TIME_FORMS}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


class RecordFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which records to show; an empty criterion matches everything.

    ``agent``: caller, target or anywhere in the chain. ``task``: the request id, the root
    task (``tree``) or ``detail.task_id``. ``kind``: exact, or a prefix ending in "." ("auth.").
    ``since_us``/``until_us``: ``since_us <= ts_us < until_us``.
    """

    agent: str = ""
    task: str = ""
    tree: str = ""
    decision: str = ""
    kind: str = ""
    replica: str = ""
    since_us: int = 0
    until_us: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, str | None]) -> RecordFilter:
        values = {k: v for k, v in options.items() if v}
        since, until = values.pop("since", None), values.pop("until", None)
        try:
            return cls(**values, since_us=parse_time_us(since) if since else 0,
                       until_us=parse_time_us(until) if until else 0)
        except TypeError as exc:
            raise AuditSourceError(f"unknown filter: {exc}") from exc

    def matches(self, record: AuditRecord) -> bool:
        return (
            (not self.agent or self.agent in (record.caller, record.target, *record.chain))
            and (not self.task or self.task in (record.request_id, record.tree,
                                                record.detail.get("task_id")))
            and (not self.tree or record.tree == self.tree)
            and (not self.decision or record.decision == self.decision)
            and (not self.kind or record.kind == self.kind
                 or (self.kind.endswith(".") and record.kind.startswith(self.kind)))
            and (not self.replica or record.replica == self.replica)
            and (not self.since_us or record.ts_us >= self.since_us)
            and (not self.until_us or record.ts_us < self.until_us)
        )
