"""Load every file a configuration names, as the broker will at start-up, and stop at the first
problem with ``file:line: what``.

``a2a-broker config-check`` runs this, and so does ``a2a-broker serve`` before any worker starts,
so a broken policy, key or card is one line on stderr instead of a worker's traceback. The
files are read with the loaders the broker itself uses (the policy engine, the key loader, the
declarative card loader over a throwaway in-memory store); nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.config_errors import Where
from broker.datacontrols import open_controls
from broker.datacontrols.presidio import PresidioUnavailableError
from broker.errors import BrokerError
from broker.identity.cards import CardVerifier
from broker.identity.credentials import is_credential_digest
from broker.identity.directory import AgentDirectory, DeclarativeCardError
from broker.identity.keys import BrokerKeys, KeyFileError, load_signing_key
from broker.mcp.servers import registry_from_settings
from broker.outbound.egress import EgressPolicy
from broker.policy.engine import PolicyEngine, check_model
from broker.policy.rules import PolicyError
from broker.policy.runtime import DEFAULT_MODEL, check_policy_settings
from broker.settings import Settings, SettingsError
from broker.stores.memory import MemoryBackend

_AGENT_ENTRY = re.compile(r"^\[agents\.([^\]]+)\]")


@dataclass(frozen=True, slots=True)
class CheckedFiles:
    """What the files held, for a one-line summary."""

    policy_rules: int | None  # None: no policy file (every hop allowed)
    cards: int
    identities: int


def check_files(
    settings: Settings, config_path: str | None, environ: Mapping[str, str] | None = None
) -> CheckedFiles:
    """Read every file ``settings`` names; raise ``SettingsError`` (``file:line: what``) at the
    first that the broker could not start with."""
    env = os.environ if environ is None else environ
    where = _where(config_path)
    _check_admin_digest(settings, where)
    _refuse_unapplied(settings, where)
    _check_mcp(settings, where, env)
    keys = _load_keys(settings, where)
    rules = _load_policy(settings, where)
    cards = _load_cards(settings, keys, where)
    _check_audit(settings, where, env)
    identities = len(set(settings.agents) - set(cards))
    return CheckedFiles(policy_rules=rules, cards=len(cards), identities=identities)


def _refuse_unapplied(settings: Settings, where: Where) -> None:
    """A control asked for must apply: a data-controls engine that cannot load would leave the
    broker without it, so the broker refuses to start instead."""
    _check_data_engine(settings, where)


def _check_mcp(settings: Settings, where: Where, env: Mapping[str, str]) -> None:
    """Every ``[mcp.servers.NAME]`` registers as the broker will register it at start-up (its
    name, its URL under the egress rules, its credential's secret), and the sealing secret is
    there if one is named."""
    mcp = settings.mcp
    if mcp.seal_key_env and not env.get(mcp.seal_key_env):
        raise SettingsError(where.say(("mcp", "seal_key_env"), (
            f"seal_key_env names ${mcp.seal_key_env}, which is not set")))
    for name in mcp.servers:
        try:
            registry_from_settings(
                msgspec.structs.replace(mcp, servers={name: mcp.servers[name]}), env,
                EgressPolicy(settings.egress).check_url)
        except BrokerError as err:
            raise SettingsError(where.say(("mcp", "servers", name), err.message)) from None


def _check_data_engine(settings: Settings, where: Where) -> None:
    """The Presidio engine, where configured, loads now (as the broker will load it)."""
    data = settings.datacontrols
    if not data.enabled or data.engine != "presidio":
        return
    try:
        open_controls(data)
    except PresidioUnavailableError as exc:
        raise SettingsError(where.say(("datacontrols", "engine"), str(exc))) from exc


def _where(config_path: str | None) -> Where:
    if not config_path:
        return Where("(defaults)")
    try:
        return Where(config_path, Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return Where(config_path)


def _check_admin_digest(settings: Settings, where: Where) -> None:
    digest = settings.admin.token_sha256.strip().lower()
    if digest and not is_credential_digest(digest):
        raise SettingsError(
            where.say(
                ("admin", "token_sha256"),
                "[admin] token_sha256 is not a SHA-256 hex digest"
                " (make one with `a2a-broker hash-credential TOKEN`)",
            )
        )


def _load_keys(settings: Settings, where: Where) -> BrokerKeys:
    path = settings.keys.signing_key_file
    try:
        key = load_signing_key(settings.path(path)) if path else Ed25519PrivateKey.generate()
    except KeyFileError as exc:
        raise SettingsError(where.say(("keys", "signing_key_file"), str(exc))) from exc
    return BrokerKeys(key, jwks_url=f"{settings.public_url}/.well-known/jwks.json")


def _load_policy(settings: Settings, where: Where) -> int | None:
    """The policy's rule count (None: no policy file), read by the broker's own engine."""
    policy = settings.policy
    check_policy_settings(settings)  # a broker never allows everything by omission
    model = settings.path(policy.model_file) if policy.model_file else DEFAULT_MODEL
    model_text = _read_named(model, where, ("policy", "model_file"))
    try:
        check_model(model_text, str(model))
        if not policy.policy_file:
            return None
        policy_path = settings.path(policy.policy_file)
        _read_named(policy_path, where, ("policy", "policy_file"))
        engine = PolicyEngine.from_files(model, policy_path)
    except PolicyError as exc:  # names the policy (or model) file and its line
        raise SettingsError(str(exc)) from exc
    return engine.snapshot.rule_count


def _read_named(path: Path, where: Where, keys: tuple[str, ...]) -> str:
    """The text of a file the config names; a file that cannot be read is the config's line."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(where.say(keys, f"cannot read {path}: {exc.strerror}")) from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(where.say(keys, f"{path} is not UTF-8 text")) from exc


def _load_cards(settings: Settings, keys: BrokerKeys, where: Where) -> list[str]:
    """The names of the cards in ``cards_dir``, each validated (and its ``[agents]`` entry)."""
    try:
        verifier = CardVerifier.from_settings(settings)
    except KeyFileError as exc:
        raise SettingsError(where.say(("registry", "card_key_files"), str(exc))) from exc
    directory = AgentDirectory(
        settings, MemoryBackend().stores(), keys, verifier, _no_fetching
    )
    cards_dir = settings.registry.cards_dir
    try:
        records = asyncio.run(
            directory.load_declarative(settings.path(cards_dir) if cards_dir else None)
        )
    except DeclarativeCardError as exc:
        raise SettingsError(_card_problem(str(exc), where)) from exc
    return [record.name for record in records]


def _card_problem(message: str, where: Where) -> str:
    """A card file's problem names the file; an ``[agents]`` entry's or the folder's gets the
    config's line."""
    entry = _AGENT_ENTRY.match(message)
    if entry:
        return where.say(("agents", entry.group(1)), message)
    if message.startswith("cards folder "):
        return where.say(("registry", "cards_dir"), message)
    return message


async def _no_fetching(url: str) -> bytes:
    raise AssertionError(f"declarative cards are files; nothing fetches {url}")


def _check_audit(settings: Settings, where: Where, env: Mapping[str, str]) -> None:
    audit = settings.audit
    if audit.backend == "file":
        _check_writable_dir(settings.path(audit.dir), where, ("audit", "dir"))
    if not audit.export.enabled:
        return
    if audit.export.positions == "file":
        folder = settings.path(audit.export.positions_path).parent
        _check_writable_dir(folder, where, ("audit", "export", "positions_path"))
    for index, sink in enumerate(audit.export.sinks):
        at = ("audit", "export", "sinks", index)
        if sink.kind == "hec" and not env.get(sink.token_env or ""):
            problem = f"sink {sink.name}: token_env ${sink.token_env or '(empty)'} is not set"
            raise SettingsError(where.say((*at, "token_env"), problem))
        if sink.kind == "jsonl":
            _check_writable_dir(settings.path(sink.path).parent, where, (*at, "path"))


def _check_writable_dir(folder: Path, where: Where, keys: tuple[str | int, ...]) -> None:
    """``folder`` exists and is writable, or can be created (its nearest existing parent is)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(where.say(keys, f"{existing} is not a folder (for {folder})"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(where.say(keys, f"cannot write in {existing} (for {folder})"))
