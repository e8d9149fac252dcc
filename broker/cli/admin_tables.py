"""The tables the admin commands show on a terminal, from the admin API's answers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.cli.output import Table, key_values

AGENT_COLUMNS = ("name", "status", "source", "bindings", "updated_at")


def agent_row(agent: dict[str, Any]) -> tuple[Any, ...]:
    bindings = [b for b, url in (("jsonrpc", agent["jsonrpc_url"]), ("rest", agent["rest_url"]))
                if url]
    return agent["name"], agent["status"], agent["source"], bindings, agent["updated_at"]


def agents_table(body: Any) -> Iterable[Table]:
    yield Table(AGENT_COLUMNS, [agent_row(a) for a in body["agents"]])


def one_agent_table(body: Any) -> Iterable[Table]:
    yield Table(AGENT_COLUMNS, [agent_row(body["agent"])])


def agent_tables(body: Any) -> Iterable[Table]:
    yield key_values(body["agent"], title=f"agent {body['agent']['name']}")
    card = body.get("card")
    if card:
        skills = [(s.get("id"), s.get("name"), s.get("description"))
                  for s in card.get("skills", [])]
        yield key_values({"name": card.get("name"), "version": card.get("version"),
                          "description": card.get("description")}, title="card")
        yield Table(("skill", "name", "description"), skills, title="skills")


def credential_table(body: Any) -> Iterable[Table]:
    name = body["agent"]["name"] if isinstance(body["agent"], dict) else body["agent"]
    yield key_values({"agent": name, "credential": body["credential"]},
                     title="the credential (shown once; the broker keeps only its digest)")


def tree_tables(body: Any) -> Iterable[Table]:
    yield key_values({k: v for k, v in body.items() if k != "tasks"}, title=f"tree {body['tree']}")
    columns = ("agent", "task_id", "result") if "newly_killed" in body else ("agent", "task_id")
    rows = [tuple(task.get(c) for c in columns) for task in body["tasks"]]
    yield Table(columns, rows, title="tasks")


def kill_switch_table(body: Any) -> Iterable[Table]:
    yield key_values(body, title="the global kill switch")


def policy_table(body: Any) -> Iterable[Table]:
    yield key_values(body, title="the broker's policy")


BUDGET_COLUMNS = ("scope", "metric", "window", "limit", "used", "reserved", "remaining",
                   "window_start", "source")


def budget_tables(body: Any) -> Iterable[Table]:
    rows = [tuple(b.get(c) for c in BUDGET_COLUMNS) for b in body["budgets"]]
    yield Table(BUDGET_COLUMNS, rows, title="budgets")
    live = [(scope, limits_text(limits)) for scope, limits in body.get("live", {}).items()]
    if live:
        yield Table(("scope", "live limits"), live, title="live overrides")


def live_table(body: Any) -> Iterable[Table]:
    yield Table(("scope", "live limits"), [(body["scope"], limits_text(body["limits"]))])


def limits_text(limits: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{x['metric']}/{x['window']}={x['limit']}" for x in limits) or "(unmetered)"
