"""Settings: one frozen object, decoded once from a TOML file and a few environment variables.

Nothing deeper in the broker reads the environment. Every field has a default, so the broker
starts with no file at all; an unknown or mistyped key is an error that names the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from broker.config_errors import Where, explain_validation
from broker.settings_approvals import ApprovalSettings
from broker.settings_containment import ContainmentSettings
from broker.settings_datacontrols import DataControlsSettings
from broker.settings_llm import LlmConfigError, LlmSettings, resolve_llm_settings
from broker.settings_mcp import McpSettings
from broker.settings_observability import (
    AlertSettings,
    ConsoleSettings,
    MetricsSettings,
    TracingSettings,
)

CONFIG_ENV = "A2A_BROKER_CONFIG"
ADMIN_TOKEN_ENV = "A2A_BROKER_ADMIN_TOKEN"  # noqa: S105 - the name of a variable, not a secret


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL callers use to reach this broker; rewritten cards point here. Empty = http://host:port.
    public_url: str = ""
    # Worker processes (uvicorn). Each is stateless; shared state lives in the store.
    workers: int = 1
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Connection bounds, per worker process (broker/http/connections.py, decision 0024): a
    # request's headers must arrive within header_timeout_s of the connection opening (or of
    # the first byte of a later request), its body within body_timeout_s after the headers; a
    # kept-alive connection is closed after idle_timeout_s without a request. Beyond
    # max_connections (lowered at start-up to fit the open-file limit) the oldest idle
    # connection is closed to make room, or, when none is idle, the new one is refused (503).
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 4096


class RedisCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """Redis ACL user and passwords, only ever from the environment (``REDIS_*_ENV``).

    Its repr names no secret, so a settings object in a log line or a traceback leaks nothing.
    """

    username: str = ""
    password: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""

    def __repr__(self) -> str:
        given = [name for name in self.__struct_fields__ if getattr(self, name)]
        return f"RedisCredentials(set={given})"


REDIS_USERNAME_ENV = "A2A_BROKER_REDIS_USERNAME"
REDIS_PASSWORD_ENV = "A2A_BROKER_REDIS_PASSWORD"  # noqa: S105 - the name of a variable
REDIS_SENTINEL_USERNAME_ENV = "A2A_BROKER_REDIS_SENTINEL_USERNAME"
REDIS_SENTINEL_PASSWORD_ENV = "A2A_BROKER_REDIS_SENTINEL_PASSWORD"  # noqa: S105 - a name


class StoreSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["memory", "redis"] = "memory"
    # standalone: one server at redis_url; cluster: redis_url names one or more seed nodes of a
    # Redis Cluster (comma-separated); sentinel: redis_url names the sentinels (comma-separated)
    # and sentinel_service the monitored primary. A mode the server does not run refuses start.
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # sentinel mode: the name the sentinels monitor the primary under.
    sentinel_service: str = "mymaster"
    # rediss:// URLs: the CA bundle that signs the servers' certificates (empty: the system's),
    # and a client certificate and key for servers that ask for one (PEM files).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Start even though Redis's maxmemory-policy may evict the broker's keys (budgets,
    # revocations, task trees) when memory runs short. Off: such a server refuses start.
    allow_eviction: bool = False
    # Every batch of store writes waits (Redis WAIT, same round trip; on a cluster one WAIT per
    # node the batch wrote to) until this many replicas hold it, or fails closed
    # (STORE_UNAVAILABLE) after replica_ack_timeout_ms; so a failover cannot lose a reservation
    # the broker acted on.
    # 0: asynchronous replication (a failover may lose the last acknowledged writes).
    replica_acks: Annotated[int, msgspec.Meta(ge=0)] = 0
    replica_ack_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 100
    key_prefix: str = "a2ab"
    # Redis: how many cluster slots the budget counters are spread over (decision 0067). 1 keeps
    # every budget under one hash tag (one node of a cluster runs every budget script); S > 1
    # puts each scope in shard crc32(scope) mod S, so a fleet's budget work spreads over the
    # cluster's nodes. Never over a limit either way; with S > 1 two reserves racing across
    # shards may both be refused while room was left (each is retried once). Changing it
    # starts the counters afresh: set it before budgets are spent. The memory store ignores it.
    budget_shards: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    # How long the broker remembers which caller owns a task that is still running (seconds).
    task_route_ttl_s: int = 7 * 24 * 3600
    # How long it keeps the route of a task that had ended (completed, failed, canceled,
    # rejected) when its answer passed: long enough to fetch the finished task again or read
    # its last state on a resubscription, short enough that state follows what is alive.
    finished_task_ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 3600
    # memory backend: routes kept at most; when full, routes of finished tasks are forgotten
    # first (oldest first), and a new route is refused (STORE_FULL) if only running ones remain.
    memory_max_tasks: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    # Redis only: per-process cache of registry and credential reads (0 turns it off). A change
    # made on another replica is dropped from it at once over the control channel; this bounds
    # the staleness only when that message is lost. See broker/stores/cache.py, control.py.
    read_cache_ttl_s: float = 0.5
    # Filled by load_settings from the environment, never from the file.
    credentials: RedisCredentials = msgspec.field(default_factory=RedisCredentials)

    def __post_init__(self) -> None:
        if self.redis_mode == "standalone" and "," in self.redis_url:
            raise ValueError(
                'redis_url names several servers, but redis_mode = "standalone" uses one'
            )


class AdminSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # SHA-256 hex of the admin token. If empty, the token comes from $A2A_BROKER_ADMIN_TOKEN;
    # if neither is set, the admin API refuses every request.
    token_sha256: str = ""


class AgentCredentialSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A declaratively registered agent's broker credential, given as its SHA-256 hex digest."""

    credential_sha256: str = ""


class UpstreamCredential(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The credential the broker presents to an upstream agent, as its card's security asks.

    The secret is read from the environment variable ``env`` at start-up, or given as ``value``.
    ``kind`` "bearer" sends ``Authorization: Bearer``; "api_key" sends it in header ``header``.
    """

    kind: Literal["bearer", "api_key"] = "bearer"
    env: str = ""
    value: str = ""
    header: str = "X-API-Key"


class RegistrySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Cards registered declaratively at start-up (*.json). Relative paths are from the config file.
    cards_dir: str = ""
    # Verify JWS signatures on agent cards with these public keys (JWK JSON files or PEM files).
    card_key_files: tuple[str, ...] = ()
    # Refuse cards without a signature (only sensible when keys are configured).
    require_card_signatures: bool = False
    card_fetch_timeout_s: float = 5.0
    max_card_bytes: int = 256 * 1024


class EgressSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Link-local (169.254/16, fe80::/10) and cloud metadata addresses are always refused.
    allow_loopback: bool = False
    allow_private: bool = False
    allowed_schemes: tuple[str, ...] = ("http", "https")


class LimitSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 64
    max_header_bytes: int = 16 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 120.0
    upstream_pool_size: int = 256
    sse_idle_timeout_s: float = 300.0
    sse_max_duration_s: float = 3600.0
    sse_heartbeat_s: float = 15.0
    # Items in one message the broker forwards: parts, and task ids in referenceTaskIds (each
    # is an ownership check). Past these: TOO_MANY_ITEMS, before anything is forwarded.
    max_message_parts: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_reference_tasks: Annotated[int, msgspec.Meta(ge=0)] = 32


class PolicySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Casbin model and rules. A policy file is required, and must hold at least one rule,
    # unless allow_all = true says explicitly that every authenticated agent may call every
    # agent and originate work (fine for a first try, wrong for production).
    model_file: str = ""  # empty: the model shipped with the broker (policies/model.conf)
    policy_file: str = ""
    allow_all: bool = False
    reload_interval_s: float = 1.0
    # Redis pub/sub channel (redis store only) that carries policy edits to every replica.
    channel: str = "policy"


class GuardLimits(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Cascade bounds; 0 means unlimited. Per-agent values apply to hops *to* that agent."""

    max_depth: int = 8
    max_children_concurrent: int = 32
    max_children_total: int = 256
    max_tree_size: int = 2048
    max_reentries: int = 1


class GuardOverride(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-agent values; a field left out keeps the global value."""

    max_depth: int | None = None
    max_children_concurrent: int | None = None
    max_children_total: int | None = None
    max_tree_size: int | None = None
    max_reentries: int | None = None


class DelegationSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    token_ttl_s: Annotated[float, msgspec.Meta(ge=1.0)] = 600.0
    # Deadline of a hop when the caller asks for none (A2A-Deadline header, seconds).
    default_deadline_s: float = 600.0
    limits: GuardLimits = msgspec.field(default_factory=GuardLimits)
    agents: dict[str, GuardOverride] = msgspec.field(default_factory=dict)

    def limits_for(self, agent: str) -> GuardLimits:
        override = self.agents.get(agent)
        if override is None:
            return self.limits
        fields = override.__struct_fields__
        changed = {f: v for f in fields if (v := getattr(override, f)) is not None}
        return msgspec.structs.replace(self.limits, **changed)


class AuditExportSinkSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One SIEM destination. ``name`` keys the saved position: renaming a sink re-exports the
    whole log to it."""

    name: str
    kind: Literal["syslog", "hec", "jsonl"]
    url: str = ""  # hec: base URL; /services/collector/event is appended
    token_env: str = ""  # hec: the environment variable holding the HEC token
    host: str = ""  # syslog (TCP, RFC 5424 with RFC 6587 octet counting)
    port: int = 514
    facility: int = 16  # local0
    path: str = ""  # jsonl
    batch_size: int = 500
    max_backoff_s: float = 30.0
    timeout_s: float = 10.0


class AuditExportSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # With the Redis audit log shared by replicas, enable export on ONE replica only.
    enabled: bool = False
    positions: Literal["file", "redis"] = "file"
    positions_path: str = "var/audit/export-positions.json"
    positions_key: str = "audit:export"  # under [store] key_prefix, for positions = "redis"
    poll_interval_s: float = 0.5
    sinks: tuple[AuditExportSinkSettings, ...] = ()


class AuditSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # file: one append-only JSON-lines file per broker process in `dir` (the embedded default);
    # redis: one Redis Stream per process in [store] redis_url (shared by replicas);
    # off: nothing is recorded (tests and benchmarks of other stages only).
    backend: Literal["file", "redis", "off"] = "file"
    dir: str = "var/audit"
    # This process's chain name; empty: <hostname>-<port> (-2, -3... for further workers), the
    # same after a restart, so a restarted broker continues its chain (broker/audit/replica_id.py).
    replica: str = ""
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 60.0
    fsync: bool = True
    # file backend: when the fsync of a forwarded request's decision record must be done.
    # forward: before the request is forwarded (the record is on disk before the agent acts).
    # reply: the record is written (it survives a crash of the broker) before forwarding, and
    # fsynced while the agent works; the caller gets no answer until it is on disk.
    # docs/decisions/0009-audit-durable-before-reply.md says what each costs and risks.
    durable_before: Literal["forward", "reply"] = "forward"
    # file backend with fsync: keep 1 MiB of durable zeros after the last record and write each
    # record over them (its fdatasync then journals no new size: about half the cost on ext4).
    # A live file then ends with zeros, so a tool that follows it as it grows (tail -f, a log
    # shipper) sees nothing new: set false to append instead (decision 0074).
    zero_ahead: bool = True
    # Also keep a redacted copy of request bodies of calls from or to these agents (default:
    # digests only). See broker/audit/redact.py for what is redacted.
    payload_agents: tuple[str, ...] = ()
    # Where every checkpoint's position is also written, outside the log's trust, so that
    # `audit verify --witness` finds a cut-off tail without a hand-kept checkpoint (decision
    # 0026). auto: the Redis store when [store] backend = "redis" and this log is a file, else
    # files in witness_dir; redis; file; off.
    witness: Literal["auto", "redis", "file", "off"] = "auto"
    witness_dir: str = "var/audit-witness"
    export: AuditExportSettings = msgspec.field(default_factory=AuditExportSettings)


class BudgetLimitSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    metric: Literal["calls", "tokens_in", "tokens_out", "cost_micro"]
    window: Literal["minute", "hour", "day", "month", "lifetime"]
    limit: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class RateSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    rate_per_s: Annotated[float, msgspec.Meta(gt=0)]
    burst: Annotated[int, msgspec.Meta(ge=1)] = 1


class BudgetSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Budgets by scope; a scope with no limits is not metered. See docs/budgets.md."""

    reservation_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    expire_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Redis store: calls each replica keeps reserved ahead for one set of budgets, so that a
    # call waits for no reserve round trip before it is forwarded (0: every call reserves its
    # own). Only while at least `reserve_ahead_headroom` calls would be left in each calls limit
    # of the set; nearer a limit, every call reserves its own. See docs/budgets.md.
    reserve_ahead: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 32
    reserve_ahead_headroom: Annotated[int, msgspec.Meta(ge=0)] = 1000
    # Limits for every agent that has no entry of its own in `agents` ("*" = that default).
    agents: dict[str, tuple[BudgetLimitSettings, ...]] = msgspec.field(default_factory=dict)
    teams: dict[str, tuple[BudgetLimitSettings, ...]] = msgspec.field(default_factory=dict)
    trees: tuple[BudgetLimitSettings, ...] = ()  # every root task tree
    edges: dict[str, tuple[BudgetLimitSettings, ...]] = msgspec.field(default_factory=dict)
    # MCP tools, every caller's calls together: "server.tool", or "server.*" for each tool of
    # a server that has no entry of its own (docs/mcp.md).
    tools: dict[str, tuple[BudgetLimitSettings, ...]] = msgspec.field(default_factory=dict)
    agent_rates: dict[str, RateSettings] = msgspec.field(default_factory=dict)
    edge_rates: dict[str, RateSettings] = msgspec.field(default_factory=dict)


class KeySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # PEM file of the broker's Ed25519 signing key. Empty: a key is generated at start-up and
    # lives only as long as the process (fine for a demo, wrong for several replicas).
    signing_key_file: str = ""


class Settings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    admin: AdminSettings = msgspec.field(default_factory=AdminSettings)
    registry: RegistrySettings = msgspec.field(default_factory=RegistrySettings)
    egress: EgressSettings = msgspec.field(default_factory=EgressSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    keys: KeySettings = msgspec.field(default_factory=KeySettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    budgets: BudgetSettings = msgspec.field(default_factory=BudgetSettings)
    llm: LlmSettings = msgspec.field(default_factory=LlmSettings)
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)
    delegation: DelegationSettings = msgspec.field(default_factory=DelegationSettings)
    containment: ContainmentSettings = msgspec.field(default_factory=ContainmentSettings)
    datacontrols: DataControlsSettings = msgspec.field(default_factory=DataControlsSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    approvals: ApprovalSettings = msgspec.field(default_factory=ApprovalSettings)
    agents: dict[str, AgentCredentialSettings] = msgspec.field(default_factory=dict)
    upstream_credentials: dict[str, UpstreamCredential] = msgspec.field(default_factory=dict)
    # Filled by load_settings, not from the file: where relative paths are resolved from.
    base_dir: str = ""
    admin_token: str = ""

    @property
    def public_url(self) -> str:
        url = self.server.public_url or f"http://{self.server.host}:{self.server.port}"
        return url.rstrip("/")

    def path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir or ".") / p


class SettingsError(Exception):
    """The configuration could not be loaded; the message says ``file:line: what``."""


_FILE_ONLY_FIELDS = ("base_dir", "admin_token")
_TOML_AT = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def load_settings(path: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (or ``$A2A_BROKER_CONFIG``; none = defaults)."""
    env = dict(os.environ if environ is None else environ)
    path = path or env.get(CONFIG_ENV) or None
    text = ""
    raw: dict[str, object] = {}
    base_dir = "."
    if path:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(_toml_syntax_problem(path, str(exc))) from exc
        base_dir = str(file.resolve().parent)
    where = Where(path or "(defaults)", text)
    for name in _FILE_ONLY_FIELDS:
        if name in raw:
            raise SettingsError(where.say((name,), f"unknown key `{name}`"))
    store = raw.get("store")
    if isinstance(store, dict) and "credentials" in store:
        raise SettingsError(
            where.say(("store", "credentials"), "Redis credentials come from the environment "
                      f"only (${REDIS_USERNAME_ENV}, ${REDIS_PASSWORD_ENV})")
        )
    document = dict(raw)
    raw["base_dir"] = base_dir
    raw["admin_token"] = env.get(ADMIN_TOKEN_ENV, "")
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        keys, message = explain_validation(exc, document, Settings)
        raise SettingsError(where.say(keys, message)) from exc
    _check_upstream_secrets(settings, env, where)
    settings = _with_store_environment(settings, env)
    settings = _resolve_upstream_secrets(settings, env)
    try:
        return msgspec.structs.replace(settings, llm=resolve_llm_settings(settings.llm, env))
    except LlmConfigError as exc:
        raise SettingsError(where.say(exc.path, str(exc))) from exc


def _toml_syntax_problem(path: str, message: str) -> str:
    found = _TOML_AT.match(message)
    if not found:
        return f"{path}: not valid TOML: {message}"
    return f"{path}:{found['line']}: not valid TOML: {found['what']} (column {found['column']})"


def _check_upstream_secrets(settings: Settings, env: dict[str, str], where: Where) -> None:
    for agent, cred in settings.upstream_credentials.items():
        if cred.env and cred.env not in env:
            raise SettingsError(
                where.say(
                    ("upstream_credentials", agent, "env"),
                    f"upstream_credentials.{agent}.env names ${cred.env}, which is not set",
                )
            )


def _resolve_upstream_secrets(settings: Settings, env: dict[str, str]) -> Settings:
    resolved = {
        agent: msgspec.structs.replace(cred, value=env[cred.env]) if cred.env else cred
        for agent, cred in settings.upstream_credentials.items()
    }
    return msgspec.structs.replace(settings, upstream_credentials=resolved)


def _with_store_environment(settings: Settings, env: dict[str, str]) -> Settings:
    """Redis credentials from the environment; TLS file paths resolved from the config's folder."""
    credentials = RedisCredentials(
        username=env.get(REDIS_USERNAME_ENV, ""),
        password=env.get(REDIS_PASSWORD_ENV, ""),
        sentinel_username=env.get(REDIS_SENTINEL_USERNAME_ENV, ""),
        sentinel_password=env.get(REDIS_SENTINEL_PASSWORD_ENV, ""),
    )
    store = settings.store
    tls = {
        name: str(settings.path(value))
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")
        if (value := getattr(store, name))
    }
    store = msgspec.structs.replace(store, credentials=credentials, **tls)
    return msgspec.structs.replace(settings, store=store)
