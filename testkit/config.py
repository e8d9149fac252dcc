"""``BrokerConfig``: a broker's TOML file for a test or a benchmark, built in code and checked by
the broker's own settings loader when it is written, so a misspelt key fails before any process
starts (with the loader's ``file:line: what`` message).

The defaults are what tests need, not what production has:

    [server] host = "127.0.0.1", port = <the port given>
    [egress] allow_loopback = true   # the agents run on loopback
    [policy] allow_all = true        # a broker refuses to start without a policy choice

Everything else is set by table, with dotted table names; ``None`` removes a key:

    config = BrokerConfig(port=free_port())
    config.set("limits", max_body_bytes=65536, upstream_timeout_s=1.0)
    config.set("containment.agent_max_concurrent", **{"gated-capped": 2})
    config.set("budgets.agents", alice=[budget("calls", "day", 100)])
    config.use_redis(redis_url, key_prefix="e2e-x").use_policy_file(path)
    path = config.write(tmp_path / "broker.toml", env={"TOKEN_ENV": "..."})
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

from broker.settings import SettingsError, load_settings

TomlValue: TypeAlias = "str | int | float | bool | Path | list[Any] | dict[str, Any] | None"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def budget(metric: str, window: str, limit: int) -> dict[str, Any]:
    """One limit of a ``[budgets.agents]`` (``teams``, ``edges``) list."""
    return {"metric": metric, "window": window, "limit": limit}


def credential_sha256(credential: str) -> str:
    """What ``[agents.NAME] credential_sha256`` holds for ``credential``."""
    return hashlib.sha256(credential.encode()).hexdigest()


class BrokerConfig:
    """A broker configuration as nested tables; ``write`` renders and validates it."""

    def __init__(self, *, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.tables: dict[str, Any] = {
            "server": {"host": host, "port": port},
            "egress": {"allow_loopback": True},
            "policy": {"allow_all": True},
        }

    def set(self, table: str, /, **values: TomlValue) -> BrokerConfig:
        """Set keys of ``table`` (dotted: ``"llm.providers.fake"``); ``None`` removes a key."""
        node = self._table(table)
        for key, value in values.items():
            if value is None:
                node.pop(key, None)
            else:
                node[key] = _plain(value)
        return self

    def use_redis(self, redis_url: str, *, key_prefix: str, **more: TomlValue) -> BrokerConfig:
        """``[store] backend = "redis"`` at ``redis_url`` under ``key_prefix``."""
        return self.set(
            "store", backend="redis", redis_url=redis_url, key_prefix=key_prefix, **more
        )

    def use_policy_file(self, path: str | Path, **more: TomlValue) -> BrokerConfig:
        """A policy file instead of ``allow_all``."""
        return self.set("policy", allow_all=None, policy_file=path, **more)

    def identities(self, credentials: Mapping[str, str]) -> BrokerConfig:
        """``[agents.NAME] credential_sha256`` for each name and credential."""
        for name, credential in credentials.items():
            self.set(f"agents.{name}", credential_sha256=credential_sha256(credential))
        return self

    def copy(self, *, port: int | None = None) -> BrokerConfig:
        """The same configuration (on another ``port``, if given): for replicas."""
        twin = copy.deepcopy(self)
        if port is not None:
            twin.port = port
            twin.tables["server"]["port"] = port
        return twin

    def to_toml(self) -> str:
        return "".join(_table_lines((), self.tables)).lstrip("\n")

    def write(self, path: str | Path, *, env: Mapping[str, str] | None = None) -> Path:
        """Write the TOML file and load it with ``broker.settings`` (``env`` added to this
        process's environment, as the broker will see it); the loader's error if it refuses."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml(), encoding="utf-8")
        try:
            load_settings(str(path), environ={**os.environ, **(env or {})})
        except SettingsError as exc:
            raise InvalidConfigError(f"{exc}\n--- {path}\n{self.to_toml()}") from exc
        return path

    def _table(self, dotted: str) -> dict[str, Any]:
        node = self.tables
        for part in dotted.split("."):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TypeError(f"{dotted}: {part} is a value, not a table")
            node = child
        return node


class InvalidConfigError(ValueError):
    """The broker's settings loader refused the configuration that was built."""


def _plain(value: TomlValue) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _string(text: str) -> str:
    # JSON's escapes are valid in TOML basic strings; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _table_lines(path: tuple[str, ...], table: dict[str, Any]) -> list[str]:
    values = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = []
    if path and (values or not tables):
        lines.append("\n[" + ".".join(_key(p) for p in path) + "]\n")
    lines.extend(f"{_key(k)} = {_value(v)}\n" for k, v in values)
    for key, sub in tables:
        lines.extend(_table_lines((*path, key), sub))
    return lines
