"""``a2a-broker agents|trees|budgets|policy reload|policy show``: the admin API from the shell.

The broker is found at ``--url`` or ``$A2A_BROKER_URL`` (default http://127.0.0.1:8080), the admin
token is ``--admin-token`` or ``$A2A_BROKER_ADMIN_TOKEN``. Answers are tables on a terminal and
JSON otherwise (``broker.cli.output``).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_type_hints

from broker.cli import admin_tables as tables
from broker.cli.admin_client import URL_ENV, AdminAnswer, AdminCallFailedError, call_admin
from broker.cli.output import EXIT_OK, EXIT_USAGE, Output, add_json_option
from broker.settings import ADMIN_TOKEN_ENV, BudgetLimitSettings

_LIMIT_FIELDS = get_type_hints(BudgetLimitSettings)
_METRICS: tuple[str, ...] = get_args(_LIMIT_FIELDS["metric"])
_WINDOWS: tuple[str, ...] = get_args(_LIMIT_FIELDS["window"])


# --- argparse wiring --------------------------------------------------------------------------


def connection_options(parser: argparse.ArgumentParser, default_url: str, leaf: bool) -> None:
    """``--url``, ``--admin-token`` and ``--json``. On a subcommand (``leaf``) they may follow
    its name and override what was given before it."""
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "--url",
        default=suppress if leaf else os.environ.get(URL_ENV, default_url),
        help=f"the broker's URL (default: ${URL_ENV}, else {default_url})",
    )
    parser.add_argument(
        "--admin-token",
        default=suppress if leaf else os.environ.get(ADMIN_TOKEN_ENV, ""),
        help=f"the admin token (default: ${ADMIN_TOKEN_ENV})",
    )
    add_json_option(parser, leaf=leaf)


def _group(sub: Any, name: str, text: str, default_url: str) -> Any:
    parser = sub.add_parser(name, help=text, description=text)
    connection_options(parser, default_url, leaf=False)
    return parser.add_subparsers(title=f"{name} commands", required=True, metavar="COMMAND")


def _command(cmds: Any, name: str, text: str, run: Callable[..., int], default_url: str) -> Any:
    parser = cmds.add_parser(name, help=text, description=text)
    connection_options(parser, default_url, leaf=True)
    parser.set_defaults(run=run)
    return parser


def add_agents_parser(sub: Any, default_url: str) -> None:
    cmds = _group(sub, "agents", "list and administer registered agents", default_url)
    _command(cmds, "list", "list the registered agents", _list, default_url)
    for name, run, text in (
        ("show", _show, "show an agent and its card"),
        ("suspend", _suspend, "stop all traffic to and from an agent"),
        ("resume", _resume, "let a suspended agent work again"),
        ("delete", _delete, "remove an agent and revoke its credential"),
        ("rotate-credential", _rotate, "issue a new credential (the old one stops at once)"),
    ):
        p = _command(cmds, name, text, run, default_url)
        p.add_argument("name", help="the agent's name")
    for name, run, text in (
        ("register", _register, "register an agent (prints its credential once)"),
        ("update", _update, "replace an agent's card"),
    ):
        p = _command(cmds, name, text, run, default_url)
        p.add_argument("name", help="the agent's name (a-z, 0-9, '_', '-')")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--card", type=_card_file, help="path of the card's JSON file")
        src.add_argument("--card-url", help="URL the broker fetches the card from")


def add_trees_parser(sub: Any, default_url: str) -> None:
    cmds = _group(sub, "trees", "inspect and stop task trees", default_url)
    for name, run, text in (
        ("show", _tree_show, "the tasks of a tree and whether it is killed"),
        ("kill", _tree_kill, "refuse all further delegation in a tree and cancel its tasks"),
    ):
        p = _command(cmds, name, text, run, default_url)
        p.add_argument("tree", help="the tree id (in the broker log and in every hop token)")


def add_kill_parser(sub: Any, default_url: str) -> None:
    """``a2a-broker kill --all | --undo | --status``: the global kill switch."""
    text = "stop every new hop on every replica (global kill switch), or lift it"
    parser = sub.add_parser("kill", help=text, description=text)
    connection_options(parser, default_url, leaf=False)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="engage: refuse every new hop")
    what.add_argument("--undo", action="store_true", help="lift it: traffic flows again")
    what.add_argument("--status", action="store_true", help="whether it is engaged")
    parser.add_argument("--reason", default="", help="why (kept with it and in the audit)")
    parser.set_defaults(run=_kill)


def _kill(args: argparse.Namespace) -> int:
    def show(out: Output, body: Any) -> None:
        out.data(body, tables.kill_switch_table)

    if args.status:
        return _run(args, lambda: call_admin(args, "GET", "/kill"), show)
    if args.undo:
        return _run(args, lambda: call_admin(args, "DELETE", "/kill"), show,
                    lambda body: "kill switch lifted: traffic flows again"
                    if body.get("was_engaged") else "kill switch was not engaged")  # fmt: skip
    return _run(args, lambda: call_admin(args, "POST", "/kill", {"reason": args.reason}), show,
                lambda body: "kill switch engaged: every new hop is refused on every replica"
                if body.get("newly_engaged") else "kill switch was already engaged")  # fmt: skip


def add_budgets_parser(sub: Any, default_url: str) -> None:
    cmds = _group(sub, "budgets", "budgets: used, reserved, remaining", default_url)
    show = _command(
        cmds, "show", "the budgets of an agent or a task tree (all, without either)", _budgets_show,
        default_url,
    )
    show.add_argument(
        "--agent", default="", help="an agent: its own budgets, its teams' and its edges'"
    )
    show.add_argument("--tree", default="", help="a task tree id")
    scope_help = "scope key: agent:NAME, agent:*, team:NAME, tree:* or edge:CALLER>TARGET"
    set_ = _command(
        cmds, "set", "replace a scope's limits live (on every replica)", _budgets_set, default_url
    )
    set_.add_argument("scope", help=scope_help)
    set_.add_argument(
        "--limit",
        dest="limits",
        action="append",
        type=_limit_arg,
        required=True,
        metavar="METRIC/WINDOW=N",
        help=f"e.g. calls/day=100 (repeat for more); metrics: {', '.join(_METRICS)};"
        f" windows: {', '.join(_WINDOWS)}",
    )
    unset = _command(
        cmds, "unset", "drop a scope's live limits: the config applies again", _budgets_unset,
        default_url,
    )
    unset.add_argument("scope", help=scope_help)


def add_policy_admin_commands(cmds: Any, default_url: str) -> None:
    """``policy reload`` and ``policy show`` talk to a running broker."""
    for name, run, text in (
        ("reload", _policy_reload, "make the broker re-read its policy file now"),
        ("show", _policy_show, "the version of the policy the broker runs"),
    ):
        p = cmds.add_parser(name, help=text, description=text)
        connection_options(p, default_url, leaf=False)
        p.set_defaults(run=run)


def _card_file(path: str) -> dict[str, Any]:
    try:
        card: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not JSON: {exc}") from exc
    return card


def _limit_arg(text: str) -> dict[str, object]:
    """``calls/day=100`` -> ``{"metric": "calls", "window": "day", "limit": 100}``."""
    pair, sep, amount = text.partition("=")
    metric, slash, window = (part.strip() for part in pair.partition("/"))
    if not (sep and slash and metric and window and amount.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected METRIC/WINDOW=N (e.g. calls/day=100): {text!r}")
    if metric not in _METRICS:
        raise argparse.ArgumentTypeError(
            f"unknown metric {metric!r} in {text!r} (valid: {', '.join(_METRICS)})"
        )
    if window not in _WINDOWS:
        raise argparse.ArgumentTypeError(
            f"unknown window {window!r} in {text!r} (valid: {', '.join(_WINDOWS)})"
        )
    return {"metric": metric, "window": window, "limit": int(amount)}


# --- one admin call ---------------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    call: Callable[[], AdminAnswer],
    show: Callable[[Output, Any], None] | None = None,
    done: Callable[[Any], str] | None = None,
) -> int:
    out = Output.of(args)
    try:
        answer = call()
    except AdminCallFailedError as exc:
        if exc.usage:
            out.err.write(f"a2a-broker: {exc.message}\n")
            return EXIT_USAGE
        return out.fail(exc.message, exc.document)
    if show is not None:
        show(out, answer.body)
    if done is not None:
        out.done(done(answer.body))
    return EXIT_OK


# --- agents -----------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", "/agents"),
                lambda out, body: out.data(body, tables.agents_table))


def _show(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", f"/agents/{_quoted(args.name)}"),
                lambda out, body: out.data(body, tables.agent_tables))


def _status_change(args: argparse.Namespace, action: str, said: str) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", f"/agents/{_quoted(args.name)}/{action}", {}),
        lambda out, body: out.data(body, tables.one_agent_table),
        lambda _: f"{said} agent {args.name}",
    )


def _suspend(args: argparse.Namespace) -> int:
    return _status_change(args, "suspend", "suspended")


def _resume(args: argparse.Namespace) -> int:
    return _status_change(args, "resume", "resumed")


def _delete(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "DELETE", f"/agents/{_quoted(args.name)}"),
        done=lambda _: f"deleted agent {args.name} and revoked its credential",
    )


def _rotate(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", f"/agents/{_quoted(args.name)}/credential", {}),
        lambda out, body: out.data(body, tables.credential_table),
        lambda _: f"issued a new credential for agent {args.name}; the old one no longer works",
    )


def _card_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"card": args.card} if args.card is not None else {"card_url": args.card_url}


def _register(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", "/agents", {"name": args.name, **_card_body(args)}),
        lambda out, body: out.data(body, tables.credential_table),
        lambda body: f"registered agent {args.name}; its card is served at"
        f" {body['agent']['broker_card_url']}",
    )


def _update(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "PUT", f"/agents/{_quoted(args.name)}", _card_body(args)),
        lambda out, body: out.data(body, tables.one_agent_table),
        lambda _: f"updated the card of agent {args.name}",
    )


# --- trees ------------------------------------------------------------------------------------


def _tree_show(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", f"/trees/{_quoted(args.tree)}"),
                lambda out, body: out.data(body, tables.tree_tables))


def _tree_kill(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", f"/trees/{_quoted(args.tree)}/kill", {}),
        lambda out, body: out.data(body, tables.tree_tables),
        lambda body: f"killed tree {args.tree}; CancelTask sent to {len(body['tasks'])} task(s)",
    )


# --- policy -----------------------------------------------------------------------------------


def _policy_reload(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", "/policy/reload", {}),
        lambda out, body: out.data(body, tables.policy_table),
        lambda body: f"policy reloaded: version {str(body['version'])[:12]}",
    )


def _policy_show(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", "/policy"),
                lambda out, body: out.data(body, tables.policy_table))


# --- budgets ----------------------------------------------------------------------------------


def _budgets_show(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode(
        {k: v for k, v in (("agent", args.agent), ("tree", args.tree)) if v}
    )
    return _run(args, lambda: call_admin(args, "GET", "/budgets" + (f"?{query}" if query else "")),
                lambda out, body: out.data(body, tables.budget_tables))


def _scope_path(scope: str) -> str:
    return "/budgets/" + urllib.parse.quote(scope, safe="")


def _budgets_set(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "PUT", _scope_path(args.scope), {"limits": args.limits}),
        lambda out, body: out.data(body, tables.live_table),
        lambda body: f"set the live limits of {args.scope}: {tables.limits_text(body['limits'])}",
    )


def _budgets_unset(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "DELETE", _scope_path(args.scope)),
        done=lambda _: f"dropped the live limits of {args.scope}; its configured limits apply",
    )


def _quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
