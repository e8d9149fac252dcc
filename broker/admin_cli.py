"""``a2a-broker agents …``: the admin API from the shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from broker.settings import ADMIN_TOKEN_ENV

URL_ENV = "A2A_BROKER_URL"


def _admin_parser(sub: Any, name: str, text: str, default_url: str) -> Any:
    parser = sub.add_parser(name, help=text)
    parser.add_argument("--url", default=os.environ.get(URL_ENV, default_url), help="broker URL")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV, ""),
        help=f"admin token (default: ${ADMIN_TOKEN_ENV})",
    )
    return parser.add_subparsers(title=f"{name} commands", required=True)


def add_trees_parser(sub: Any, default_url: str) -> None:
    cmds = _admin_parser(sub, "trees", "inspect and stop task trees (admin API)", default_url)
    for name, run, text in (
        ("show", _tree_show, "the tasks of a tree and whether it is killed"),
        ("kill", _tree_kill, "refuse all further delegation in a tree and cancel its tasks"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("tree", help="the tree id (in the broker log and in every hop token)")
        p.set_defaults(run=run)


def add_kill_parser(sub: Any, default_url: str) -> None:
    """``a2a-broker kill --all | --undo | --status``: the global kill switch."""
    parser = sub.add_parser(
        "kill", help="stop every new hop on every replica (global kill switch), or lift it"
    )
    parser.add_argument("--url", default=os.environ.get(URL_ENV, default_url), help="broker URL")
    parser.add_argument("--admin-token", default=os.environ.get(ADMIN_TOKEN_ENV, ""))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true", help="engage: refuse every new hop")
    what.add_argument("--undo", action="store_true", help="lift it: traffic flows again")
    what.add_argument("--status", action="store_true", help="whether it is engaged")
    parser.add_argument("--reason", default="", help="why (kept with it and in the audit)")
    parser.set_defaults(run=_kill)


def _kill(args: argparse.Namespace) -> int:
    if args.undo:
        return _call(args, "DELETE", "/kill")
    if args.status:
        return _call(args, "GET", "/kill")
    return _call(args, "POST", "/kill", {"reason": args.reason})


def add_budgets_parser(sub: Any, default_url: str) -> None:
    cmds = _admin_parser(sub, "budgets", "budgets: used, reserved, remaining", default_url)
    show = cmds.add_parser("show", help="the configured budgets of an agent or a task tree")
    show.add_argument("--agent", default="")
    show.add_argument("--tree", default="")
    show.set_defaults(run=_budgets_show)
    scope_help = "scope key: agent:NAME, agent:*, team:NAME, tree:* or edge:CALLER>TARGET"
    set_ = cmds.add_parser("set", help="replace a scope's limits live (on every replica)")
    set_.add_argument("scope", help=scope_help)
    set_.add_argument(
        "--limit",
        dest="limits",
        action="append",
        type=_limit_arg,
        required=True,
        metavar="METRIC/WINDOW=N",
        help="e.g. calls/day=100 or cost_micro/month=5000000 (repeat for more)",
    )
    set_.set_defaults(run=_budgets_set)
    unset = cmds.add_parser("unset", help="drop a scope's live limits: the config applies again")
    unset.add_argument("scope", help=scope_help)
    unset.set_defaults(run=_budgets_unset)


def add_policy_admin_commands(cmds: Any, default_url: str) -> None:
    """``policy reload`` and ``policy show`` talk to a running broker."""
    for name, run, text in (
        ("reload", _policy_reload, "make the broker re-read its policy file now"),
        ("show", _policy_show, "the version of the policy the broker runs"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("--url", default=os.environ.get(URL_ENV, default_url), help="broker URL")
        p.add_argument("--admin-token", default=os.environ.get(ADMIN_TOKEN_ENV, ""))
        p.set_defaults(run=run)


def add_agents_parser(sub: Any, default_url: str) -> None:
    cmds = _admin_parser(sub, "agents", "list and administer registered agents", default_url)
    cmds.add_parser("list", help="list agents").set_defaults(run=_list)
    for name, run, text in (
        ("show", _show, "show an agent and its card"),
        ("suspend", _suspend, "stop all traffic to and from an agent"),
        ("resume", _resume, "let a suspended agent work again"),
        ("delete", _delete, "remove an agent and revoke its credential"),
        ("rotate-credential", _rotate, "issue a new credential (the old one stops at once)"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("name")
        p.set_defaults(run=run)
    for name, run, text in (
        ("register", _register, "register an agent (prints its credential once)"),
        ("update", _update, "replace an agent's card"),
    ):
        p = cmds.add_parser(name, help=text)
        p.add_argument("name")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--card", help="path of the card JSON file")
        src.add_argument("--card-url", help="URL the broker fetches the card from")
        p.set_defaults(run=run)


def _call(args: argparse.Namespace, method: str, path: str, body: object = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator chooses the broker URL
        args.url.rstrip("/") + "/admin" + path, data=data, method=method
    )
    request.add_header("authorization", f"Bearer {args.admin_token}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            text = resp.read().decode()
    except urllib.error.HTTPError as err:
        print(_pretty(err.read().decode()), file=sys.stderr)
        return 1
    except urllib.error.URLError as err:
        print(f"a2a-broker: cannot reach {args.url}: {err.reason}", file=sys.stderr)
        return 1
    if text:
        print(_pretty(text))
    return 0


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


def _card_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.card:
        return {"card": json.loads(Path(args.card).read_text(encoding="utf-8"))}
    return {"card_url": args.card_url}


def _list(args: argparse.Namespace) -> int:
    return _call(args, "GET", "/agents")


def _show(args: argparse.Namespace) -> int:
    return _call(args, "GET", f"/agents/{args.name}")


def _suspend(args: argparse.Namespace) -> int:
    return _call(args, "POST", f"/agents/{args.name}/suspend", {})


def _resume(args: argparse.Namespace) -> int:
    return _call(args, "POST", f"/agents/{args.name}/resume", {})


def _delete(args: argparse.Namespace) -> int:
    return _call(args, "DELETE", f"/agents/{args.name}")


def _rotate(args: argparse.Namespace) -> int:
    return _call(args, "POST", f"/agents/{args.name}/credential", {})


def _register(args: argparse.Namespace) -> int:
    return _call(args, "POST", "/agents", {"name": args.name, **_card_body(args)})


def _update(args: argparse.Namespace) -> int:
    return _call(args, "PUT", f"/agents/{args.name}", _card_body(args))


def _tree_show(args: argparse.Namespace) -> int:
    return _call(args, "GET", f"/trees/{args.tree}")


def _tree_kill(args: argparse.Namespace) -> int:
    return _call(args, "POST", f"/trees/{args.tree}/kill", {})


def _policy_reload(args: argparse.Namespace) -> int:
    return _call(args, "POST", "/policy/reload", {})


def _policy_show(args: argparse.Namespace) -> int:
    return _call(args, "GET", "/policy")


def _budgets_show(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode(
        {k: v for k, v in (("agent", args.agent), ("tree", args.tree)) if v}
    )
    return _call(args, "GET", "/budgets" + (f"?{query}" if query else ""))


def _limit_arg(text: str) -> dict[str, object]:
    """``calls/day=100`` -> ``{"metric": "calls", "window": "day", "limit": 100}``; the broker
    checks the metric, the window and the range."""
    pair, sep, amount = text.partition("=")
    metric, slash, window = pair.partition("/")
    if not (sep and slash and metric and window and amount.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected METRIC/WINDOW=N (e.g. calls/day=100): {text!r}")
    return {"metric": metric.strip(), "window": window.strip(), "limit": int(amount)}


def _scope_path(scope: str) -> str:
    return "/budgets/" + urllib.parse.quote(scope, safe="")


def _budgets_set(args: argparse.Namespace) -> int:
    return _call(args, "PUT", _scope_path(args.scope), {"limits": args.limits})


def _budgets_unset(args: argparse.Namespace) -> int:
    return _call(args, "DELETE", _scope_path(args.scope))
