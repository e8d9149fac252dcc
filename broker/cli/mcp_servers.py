"""``a2a-broker mcp-servers``: MCP servers registered at run time, from the shell.

The same connection options and output as ``a2a-broker agents`` (tables on a terminal, JSON
otherwise, one line on stderr per change). A secret never goes on the command line, where
``ps`` and shell history would keep it: it is read from this shell's environment
(``--secret-env``) or standard input (``--secret-stdin``), or stays in the broker's own
environment (``--broker-env``: only the variable's name is sent).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import Any

from broker.cli.admin import _command, _group, _quoted, _run
from broker.cli.admin_client import AdminCallFailedError, call_admin
from broker.cli.output import Table, key_values

COLUMNS = ("name", "source", "url", "aggregate", "credential", "updated_at")
_PATH = "/mcp-servers"


def add_mcp_servers_parser(sub: Any, default_url: str) -> None:
    cmds = _group(sub, "mcp-servers", "list and administer registered MCP servers", default_url)
    _command(cmds, "list", "list the MCP servers (configured and registered)", _list, default_url)
    for name, run, text in (
        ("show", _show, "show an MCP server (never its secret: its kind and fingerprint)"),
        ("remove", _remove, "remove an MCP server: its calls and sessions are refused at once"),
    ):
        p = _command(cmds, name, text, run, default_url)
        p.add_argument("name", help="the MCP server's name")
    p = _command(cmds, "register", "register an MCP server", _register, default_url)
    p.add_argument("name", help="the MCP server's name (a-z, 0-9, '-', single '_')")
    p.add_argument("mcp_url", metavar="MCP_URL",
                   help="its Streamable HTTP endpoint, e.g. https://host/mcp (egress rules apply)")
    _server_options(p, registering=True)
    _credential_options(p, required=False)
    p = _command(cmds, "update", "change an MCP server's URL, description or options", _update,
                 default_url)
    p.add_argument("name", help="the MCP server's name")
    p.add_argument("--mcp-url", help="its new endpoint (ends the sessions opened before)")
    _server_options(p, registering=False)
    p = _command(cmds, "rotate", "hold a new credential for an MCP server (sessions opened"
                 " before end; the next calls use the new one)", _rotate, default_url)
    p.add_argument("name", help="the MCP server's name")
    _credential_options(p, required=True)


def _server_options(p: argparse.ArgumentParser, *, registering: bool) -> None:
    p.add_argument("--description", help="what the server offers (shown to operators)")
    p.add_argument("--aggregate", action=argparse.BooleanOptionalAction,
                   default=True if registering else None,
                   help="offer its tools through the virtual server /mcp (default: yes)")
    p.add_argument("--timeout", type=float, dest="timeout_s", metavar="SECONDS",
                   help="longest a request may wait for the server's answer (default 120)")
    p.add_argument("--idle-timeout", type=float, dest="idle_timeout_s", metavar="SECONDS",
                   help="longest the server's stream may stay quiet (default 60)")


def _credential_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--credential", choices=("none", "bearer", "header"),
                   default=None if required else "none", required=required,
                   help="what the broker presents to the server: nothing, 'Authorization:"
                        " Bearer <secret>', or the secret in --header (default: none)")
    p.add_argument("--header", default="X-API-Key",
                   help="with --credential header: the header the secret travels in")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--secret-env", metavar="VAR",
                        help="read the secret from this shell's $VAR (the broker keeps it sealed)")
    source.add_argument("--secret-stdin", action="store_true",
                        help="read the secret from standard input (one line)")
    source.add_argument("--broker-env", metavar="VAR",
                        help="the secret is in $VAR on every broker replica; only the name is sent")


def _credential(args: argparse.Namespace) -> dict[str, str]:
    kind = args.credential
    credential = {"kind": kind}
    if kind == "header":
        credential["header"] = args.header
    if args.broker_env:
        credential["env"] = args.broker_env
    elif args.secret_env:
        value = os.environ.get(args.secret_env, "")
        if not value:
            raise AdminCallFailedError(f"${args.secret_env} is empty or not set", usage=True)
        credential["value"] = value
    elif args.secret_stdin:
        credential["value"] = sys.stdin.readline().rstrip("\r\n")
    elif kind != "none":
        raise AdminCallFailedError(
            f"--credential {kind} needs its secret: --secret-env, --secret-stdin or --broker-env",
            usage=True)
    return credential


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("description", "aggregate", "timeout_s", "idle_timeout_s")
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return {**({"url": args.mcp_url} if args.mcp_url else {}), **given}


# --- the commands -----------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", _PATH),
                lambda out, body: out.data(body, servers_table))


def _show(args: argparse.Namespace) -> int:
    return _run(args, lambda: call_admin(args, "GET", f"{_PATH}/{_quoted(args.name)}"),
                lambda out, body: out.data(body, server_table))


def _register(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", _PATH, {"name": args.name, **_options(args),
                                                  "credential": _credential(args)}),
        lambda out, body: out.data(body, server_table),
        lambda _: f"registered MCP server {args.name}; callers reach it at"
        f" {args.url.rstrip('/')}/mcp/{args.name}",
    )


def _update(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "PUT", f"{_PATH}/{_quoted(args.name)}", _options(args)),
        lambda out, body: out.data(body, server_table),
        lambda _: f"updated MCP server {args.name}",
    )


def _rotate(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "POST", f"{_PATH}/{_quoted(args.name)}/credential",
                           {"credential": _credential(args)}),
        lambda out, body: out.data(body, server_table),
        lambda _: f"the broker holds a new credential for MCP server {args.name}; sessions"
        " opened before end",
    )


def _remove(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda: call_admin(args, "DELETE", f"{_PATH}/{_quoted(args.name)}"),
        done=lambda _: f"removed MCP server {args.name}",
    )


# --- tables -----------------------------------------------------------------------------------


def _credential_text(credential: dict[str, str]) -> str:
    kind = credential["kind"]
    if kind == "header":
        kind = f"header {credential.get('header', '')}"
    where = f" ${credential['env']}" if credential.get("env") else ""
    return " ".join(p for p in (kind + where, credential.get("fingerprint", "")) if p)


def _row(server: dict[str, Any]) -> tuple[Any, ...]:
    return (server["name"], server["source"], server["url"], server["aggregate"],
            _credential_text(server["credential"]), server["updated_at"])


def servers_table(body: Any) -> Iterable[Table]:
    yield Table(COLUMNS, [_row(s) for s in body["servers"]])


def server_table(body: Any) -> Iterable[Table]:
    server = body["server"]
    shown = {**server, "credential": _credential_text(server["credential"])}
    yield key_values(shown, title=f"MCP server {server['name']}")
