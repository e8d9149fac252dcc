"""The ``a2a-broker`` command: run the broker, drive its admin API, run the demo.

Exit statuses are the same for every command (``broker.cli.output``): 0 done, 1 failed, 2 the
command line or the configuration is wrong, 3 the broker could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import broker
from broker.cli.output import EXIT_CANNOT_START, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from broker.settings import ADMIN_TOKEN_ENV, CONFIG_ENV, Settings, SettingsError, load_settings

DEFAULT_URL = "http://127.0.0.1:8080"
DESCRIPTION = (
    "a2a-broker: the control layer between AI agents. Run the broker (serve), check its "
    "configuration (config-check), administer a running broker (agents, mcp-servers, trees, "
    "budgets, policy), read its audit log (audit), or try it with three demo agents (demo, "
    "demo-ask)."
)
EPILOG = (
    f"The admin commands find the broker at $A2A_BROKER_URL (default {DEFAULT_URL}) with the "
    f"admin token in ${ADMIN_TOKEN_ENV}; serve, config-check and policy read the config file "
    f"given by --config or ${CONFIG_ENV}. Exit status: 0 done, 1 failed, 2 wrong command line or "
    "configuration, 3 the broker could not start."
)
CONFIG_HELP = f"the broker's TOML config file (default: ${CONFIG_ENV}, else built-in defaults)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(f"a2a-broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``a2a-broker`` command line: every subcommand and its options."""
    parser = argparse.ArgumentParser(prog="a2a-broker", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--version", action="version", version=f"a2a-broker {broker.__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = _command(sub, "serve", "run the broker")
    serve.add_argument("--config", help=CONFIG_HELP)
    serve.set_defaults(run=_serve)

    check = _command(
        sub, "config-check", "load the config and every file it names; print the settings"
    )
    check.add_argument("--config", help=CONFIG_HELP)
    check.set_defaults(run=_config_check)

    from broker.cli.admin import (  # noqa: PLC0415 - keeps `serve` start-up lean
        add_agents_parser,
        add_budgets_parser,
        add_kill_parser,
        add_policy_admin_commands,
        add_trees_parser,
    )
    from broker.cli.approvals import add_approvals_parser  # noqa: PLC0415
    from broker.cli.audit import add_audit_parser  # noqa: PLC0415
    from broker.cli.mcp_servers import add_mcp_servers_parser  # noqa: PLC0415
    from broker.cli.policy import add_policy_file_commands  # noqa: PLC0415

    add_agents_parser(sub, DEFAULT_URL)
    add_mcp_servers_parser(sub, DEFAULT_URL)
    add_trees_parser(sub, DEFAULT_URL)
    add_budgets_parser(sub, DEFAULT_URL)
    add_kill_parser(sub, DEFAULT_URL)
    add_approvals_parser(sub, DEFAULT_URL)
    add_audit_parser(sub)
    policy = _command(sub, "policy", "check, explain and reload the chain policy")
    policy_cmds = policy.add_subparsers(title="policy commands", required=True, metavar="COMMAND")
    add_policy_file_commands(policy_cmds, CONFIG_HELP)
    add_policy_admin_commands(policy_cmds, DEFAULT_URL)

    keys = _command(sub, "keys", "signing keys")
    keys_sub = keys.add_subparsers(title="keys commands", required=True, metavar="COMMAND")
    gen = _command(keys_sub, "generate", "write a new Ed25519 signing key (PEM)")
    gen.add_argument("path", help="where to write the key (readable by its owner only)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file")
    gen.set_defaults(run=_keys_generate)

    digest = _command(
        sub, "hash-credential", "print the SHA-256 digest of a credential or token (for configs)"
    )
    digest.add_argument("token", help="the token; '-' reads it from standard input")
    digest.set_defaults(run=_hash_credential)

    _add_demo_commands(sub)
    return parser


def _command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    return parser


def _add_demo_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = _command(sub, "demo", "run the broker with three demo agents (memory store)")
    demo.add_argument("--port", type=int, default=8080, help="the broker's port (default 8080)")
    demo.add_argument(
        "--state-dir", default=".a2a-broker-demo",
        help="where the demo keeps its config, credentials and logs",
    )
    demo.set_defaults(run=_demo)

    ask = _command(sub, "demo-ask", "ask the demo planner (through the broker)")
    ask.add_argument("topic", help="what the planner should write about")
    ask.add_argument(
        "--state-dir", default=".a2a-broker-demo", help="the state folder of the running demo"
    )
    ask.add_argument("--no-stream", action="store_true", help="one SendMessage, no stream")
    ask.set_defaults(run=_demo_ask)


# --- serve and config-check -------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from broker.http.connections import bounds_for, protocol_factory  # noqa: PLC0415
    from broker.observability.multiprocess import metrics_directory  # noqa: PLC0415

    settings = _checked_settings(args.config)  # one line and status 2 before any worker
    problem = _port_problem(settings.server.host, settings.server.port)
    if problem:
        print(f"a2a-broker: {problem}", file=sys.stderr)
        return EXIT_CANNOT_START
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    # uvicorn's httptools protocol with header, body and idle timeouts and a connection cap
    # (decision 0024); every worker process gets the same bounds.
    bounds = bounds_for(settings.server, settings.limits.upstream_pool_size)
    try:
        with metrics_directory(settings.metrics):  # shared by the workers (decision 0050)
            uvicorn.run(
                "broker.http.app:app_from_environment",
                factory=True,
                host=settings.server.host,
                port=settings.server.port,
                workers=settings.server.workers,
                loop="uvloop",
                http=protocol_factory(bounds),  # type: ignore[arg-type]
                # the bounded protocol times idle connections itself; this is uvicorn's own
                timeout_keep_alive=settings.server.idle_timeout_s,  # type: ignore[arg-type]
                access_log=False,
                # The broker reads neither the client's address nor the scheme of a request
                # (links and cookies come from settings), so uvicorn's X-Forwarded-* rewrite
                # would only cost a middleware call per request (decision 0100).
                proxy_headers=False,
                log_config=None,
                timeout_graceful_shutdown=5,
            )
    except SystemExit as stopped:
        # A start-up that failed inside the app: its log has the cause as one error line, and
        # so does the end of stderr (with one worker the app ran in this very process).
        if stopped.code != EXIT_CANNOT_START:
            raise
        from broker.http.app import startup_failure  # noqa: PLC0415

        cause = startup_failure() or "the start-up failed; the log above says why"
        print(f"a2a-broker: cannot start: {cause}", file=sys.stderr)
        return EXIT_CANNOT_START
    return EXIT_OK


def _checked_settings(config: str | None) -> Settings:
    """The settings, with every file they name loaded once; warnings are the worker's to log."""
    from broker.cli.preflight import check_files  # noqa: PLC0415

    settings = load_settings(config)
    logging.disable(logging.WARNING)
    try:
        check_files(settings, config or os.environ.get(CONFIG_ENV))
    finally:
        logging.disable(logging.NOTSET)
    return settings


def _port_problem(host: str, port: int) -> str | None:
    """Why the broker could not listen on ``host:port`` (None: it can, a moment ago)."""
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"cannot listen on {host}:{port}: the port is in use ([server] port)"
        return f"cannot listen on {host}:{port}: {exc.strerror} ([server] host, port)"


def _config_check(args: argparse.Namespace) -> int:
    import msgspec  # noqa: PLC0415

    from broker.cli.preflight import check_files  # noqa: PLC0415

    logging.basicConfig(format="a2a-broker: warning: %(message)s", level=logging.WARNING)
    config = args.config or os.environ.get(CONFIG_ENV)
    settings = load_settings(args.config)
    checked = check_files(settings, config)
    shown = msgspec.to_builtins(settings)
    # Secrets read from the environment are never printed.
    shown["admin_token"] = "***" if settings.admin_token else ""
    for cred in shown["upstream_credentials"].values():
        cred["value"] = "***" if cred["value"] else ""
    for provider in shown["llm"]["providers"].values():
        provider["key"] = "***" if provider["key"] else ""
    credentials = shown["store"]["credentials"]
    shown["store"]["credentials"] = {k: "***" if v else "" for k, v in credentials.items()}
    print(msgspec.json.format(msgspec.json.encode(shown)).decode())
    policy = (
        "no policy file (every hop allowed)"
        if checked.policy_rules is None
        else f"a policy of {checked.policy_rules} rules"
    )
    identities = "identity" if checked.identities == 1 else "identities"
    print(
        f"ok: {config or '(defaults)'}: {policy}, {checked.cards} card(s),"
        f" {checked.identities} caller-only {identities}",
        file=sys.stderr,
    )
    return EXIT_OK


# --- keys, credentials, demo ------------------------------------------------------------------


def _keys_generate(args: argparse.Namespace) -> int:
    from broker.identity.keys import generate_signing_key_file  # noqa: PLC0415

    try:
        kid = generate_signing_key_file(Path(args.path), overwrite=args.overwrite)
    except FileExistsError:
        print(f"a2a-broker: {args.path} exists (--overwrite replaces it)", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"a2a-broker: cannot write {args.path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.path} (kid {kid})")
    return EXIT_OK


def _hash_credential(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token  # noqa: S105
    print(hashlib.sha256(token.encode()).hexdigest())
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from broker.demo.launcher import run_demo  # noqa: PLC0415

    return run_demo(port=args.port, state_dir=args.state_dir)


def _demo_ask(args: argparse.Namespace) -> int:
    from broker.demo.ask import ask  # noqa: PLC0415

    return asyncio.run(ask(args.topic, args.state_dir, stream=not args.no_stream))


__all__ = ["ADMIN_TOKEN_ENV", "main"]
