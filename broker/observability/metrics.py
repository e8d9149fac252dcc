"""The broker's Prometheus metric families, and the registry a scrape reads.

Every label takes its values from a bounded set: agent names the broker verified (a caller that
failed authentication is ``-``; a target path that names no registered agent is ``-``), the A2A
operations, the bindings, the outcomes below, the error reasons of the error table, configured
models and budget scopes. Nothing a caller writes freely becomes a label.

Several worker processes: ``a2a-broker serve`` gives each start a fresh directory in
``PROMETHEUS_MULTIPROC_DIR`` before any worker starts (``multiprocess_dir``), so prometheus-client
keeps every process's values in memory-mapped files there and a scrape, answered by any one
worker, sums them (docs/decisions/0050). Without that variable (tests that run the app in their
own process) the values live in this process alone, in the default registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

NAMESPACE = "a2a_broker"
# Total request latency: a mediated call includes the agent's own work.
TOTAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
# What the broker adds: its own checks, a few hundred microseconds when all is well.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 2.5)
AUDIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1)

# Whether prometheus-client chose its memory-mapped values (it decides once, at import, from
# PROMETHEUS_MULTIPROC_DIR): the scrape must then read the directory, not this process.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# False with [metrics] enabled = false: the hooks then record nothing (set once at start-up).
recording = True

REQUEST_LABELS = ("caller", "target", "operation", "binding", "outcome", "reason")

requests = Counter(
    "requests",
    "Mediated requests (A2A and LLM) by who called whom, how, and how it ended.",
    REQUEST_LABELS,
    namespace=NAMESPACE,
)
latency = Histogram(
    "request_duration_seconds",
    "Time from the request's arrival to its answer (a stream: to its end).",
    ("target", "operation", "binding"),
    namespace=NAMESPACE,
    buckets=TOTAL_BUCKETS,
)
added_latency = Histogram(
    "broker_added_seconds",
    "Time the broker added: the whole request less the wait for the agent's answer "
    "(unary requests and refusals).",
    ("operation", "binding"),
    namespace=NAMESPACE,
    buckets=ADDED_BUCKETS,
)
open_streams = Gauge(
    "open_streams",
    "Streams (SSE) being relayed now.",
    ("binding",),
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
policy_decisions = Counter(
    "policy_decisions",
    "Policy decisions, per hop (allow or deny).",
    ("decision", "operation"),
    namespace=NAMESPACE,
)
guard_refusals = Counter(
    "guard_refusals",
    "Requests refused by a cascade guard (depth, fan-out, tree size, cycles, killed tree).",
    ("guard",),
    namespace=NAMESPACE,
)
llm_tokens = Counter(
    "llm_tokens",
    "LLM tokens charged, by model and direction (in: prompt, out: completion).",
    ("model", "direction"),
    namespace=NAMESPACE,
)
llm_cost = Counter(
    "llm_cost_micro",
    "LLM cost charged, in millionths of the configured currency unit, by model.",
    ("model",),
    namespace=NAMESPACE,
)
data_detections = Counter(
    "data_detections",
    "Values of sensitive data found by the data controls, by direction, type (pii:email, "
    "secret:aws_key; never a value) and the action taken.",
    ("direction", "type", "action"),
    namespace=NAMESPACE,
)
budget_calls_reserved = Counter(
    "budget_calls_reserved",
    "One-call reserves of the sets of budgets whose calls are reserved ahead ([budgets] "
    "reserve_ahead): ahead (the call found its reserve made, no round trip) or own (none was "
    "ready: it made its own).",
    ("how",),
    namespace=NAMESPACE,
)
store_round_trips = Histogram(
    "store_round_trip_seconds",
    "Redis round trips (one per store call: a script or a pipeline is one), by store call.",
    ("call",),
    namespace=NAMESPACE,
    buckets=STORE_BUCKETS,
)
store_errors = Counter(
    "store_errors",
    "Store calls that failed (Redis unreachable, timed out, refused).",
    ("call",),
    namespace=NAMESPACE,
)
audit_writes = Histogram(
    "audit_write_seconds",
    "Time to append one audit record: until durable, or until written where the broker waits "
    "for durability while the agent works ([audit] durable_before).",
    namespace=NAMESPACE,
    buckets=AUDIT_BUCKETS,
)
audit_fsyncs = Counter(
    "audit_fsyncs",
    "fsyncs of the audit file: each makes durable every record written before it (group "
    "commit), so records per fsync is how many requests shared one.",
    namespace=NAMESPACE,
)
audit_write_errors = Counter(
    "audit_write_errors",
    "Audit records that could not be written.",
    namespace=NAMESPACE,
)
breaker_state = Gauge(
    "circuit_breaker_state",
    "Circuit breaker of an upstream (agent or LLM provider): 0 closed, 1 half-open, 2 open; "
    "the worst over the worker processes that called it.",
    ("upstream",),
    namespace=NAMESPACE,
    multiprocess_mode="livemax",
)
breaker_transitions = Counter(
    "circuit_breaker_transitions",
    "Circuit breaker state changes, by upstream and the state entered.",
    ("upstream", "state"),
    namespace=NAMESPACE,
)
alerts = Counter(
    "alerts",
    "Anomaly alerts raised, by rule (new_edge, new_model, call_rate, denial_burst, guard_burst, "
    "budget_burn, deep_chain, new_card_key); each fires on one replica only.",
    ("rule",),
    namespace=NAMESPACE,
)
alert_webhook_failures = Counter(
    "alert_webhook_failures",
    "Alert webhook deliveries given up after every retry.",
    namespace=NAMESPACE,
)

# Gauges of shared state read from the store at scrape time, registered by the part that owns
# the state (the approvals queue registers ``approvals_pending``): name -> (help, label names,
# reader). The reader returns (label values, value) pairs; a failing reader is left out of
# that scrape. Registered once per process at start-up.
ScrapeReader = Callable[[], Awaitable[Sequence[tuple[tuple[str, ...], float]]]]
scrape_gauges: dict[str, tuple[str, tuple[str, ...], ScrapeReader]] = {}


def register_scrape_gauge(
    name: str, help_text: str, labels: tuple[str, ...], read: ScrapeReader
) -> None:
    """Serve ``a2a_broker_<name>`` on /metrics, read by ``read`` at each scrape."""
    scrape_gauges[name] = (help_text, labels, read)


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: every worker's values in multiprocess mode, else this
    process's default registry."""
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
