"""The ``a2a-broker`` command: run the broker, drive its admin API, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.settings import ADMIN_TOKEN_ENV, CONFIG_ENV, SettingsError, load_settings

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(f"a2a-broker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2a-broker", description=__doc__)
    sub = parser.add_subparsers(title="commands")

    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV}, else none)")
    serve.set_defaults(run=_serve)

    check = sub.add_parser("config-check", help="validate a config file and print it")
    check.add_argument("--config")
    check.set_defaults(run=_config_check)

    from broker.admin_cli import (  # noqa: PLC0415 - keeps `serve` start-up lean
        add_agents_parser,
        add_budgets_parser,
        add_kill_parser,
        add_policy_admin_commands,
        add_trees_parser,
    )
    from broker.audit_cli_args import add_audit_parser  # noqa: PLC0415

    add_agents_parser(sub, DEFAULT_URL)
    add_trees_parser(sub, DEFAULT_URL)
    add_budgets_parser(sub, DEFAULT_URL)
    add_kill_parser(sub, DEFAULT_URL)
    add_audit_parser(sub)
    policy = sub.add_parser("policy", help="check, explain and reload the chain policy")
    policy_cmds = policy.add_subparsers(title="policy commands", required=True)
    check_policy = policy_cmds.add_parser("check", help="validate a policy CSV")
    check_policy.add_argument("path")
    check_policy.add_argument("--model", default="", help="model file (default: the shipped one)")
    check_policy.set_defaults(run=_policy_check)
    explain = policy_cmds.add_parser(
        "explain", help="the decision for each hop of a chain, and the rule that decided it"
    )
    explain.add_argument("chain", nargs="+", help="agents in order: A B C means A→B→C")
    explain.add_argument("--skill", default="")
    explain.add_argument("--operation", default="SendMessage")
    explain.add_argument("--policy", default="policies/policy.csv", help="policy CSV")
    explain.add_argument(
        "--model", default="", help="model file (default: model.conf beside the policy, else ours)"
    )
    explain.set_defaults(run=_policy_explain)
    add_policy_admin_commands(policy_cmds, DEFAULT_URL)

    keys = sub.add_parser("keys", help="signing keys")
    keys_sub = keys.add_subparsers(title="keys commands", required=True)
    gen = keys_sub.add_parser("generate", help="write a new Ed25519 signing key (PEM)")
    gen.add_argument("path")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(run=_keys_generate)

    digest = sub.add_parser(
        "hash-credential", help="print the SHA-256 digest of a credential or token (for configs)"
    )
    digest.add_argument("token", help="the token; '-' reads it from standard input")
    digest.set_defaults(run=_hash_credential)

    demo = sub.add_parser("demo", help="run the broker with three demo agents (memory store)")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--state-dir", default=".a2a-broker-demo")
    demo.set_defaults(run=_demo)

    ask = sub.add_parser("demo-ask", help="ask the demo planner (through the broker)")
    ask.add_argument("topic")
    ask.add_argument("--state-dir", default=".a2a-broker-demo")
    ask.add_argument("--no-stream", action="store_true")
    ask.set_defaults(run=_demo_ask)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from broker.http.connections import bounds_for, protocol_factory  # noqa: PLC0415
    from broker.logs import configure_logging  # noqa: PLC0415

    settings = load_settings(args.config)  # fail fast, naming the bad key, before any worker
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    configure_logging(settings.server.log_level)
    # uvicorn's httptools protocol with header, body and idle timeouts and a connection cap
    # (decision 0024); every worker process gets the same bounds.
    bounds = bounds_for(settings.server, settings.limits.upstream_pool_size)
    uvicorn.run(
        "broker.http.app:app_from_environment",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        loop="uvloop",
        http=protocol_factory(bounds),  # type: ignore[arg-type]
        timeout_keep_alive=settings.server.idle_timeout_s,  # type: ignore[arg-type]
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    return 0


def _config_check(args: argparse.Namespace) -> int:
    import msgspec  # noqa: PLC0415

    settings = load_settings(args.config)
    shown = msgspec.to_builtins(settings)
    # Secrets read from the environment are never printed.
    shown["admin_token"] = "***" if settings.admin_token else ""
    for cred in shown["upstream_credentials"].values():
        cred["value"] = "***" if cred["value"] else ""
    for provider in shown["llm"]["providers"].values():
        provider["key"] = "***" if provider["key"] else ""
    print(msgspec.json.format(msgspec.json.encode(shown)).decode())
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    from broker.policy import cli  # noqa: PLC0415

    return cli.check(args.path, model_path=args.model or None)


def _policy_explain(args: argparse.Namespace) -> int:
    from broker.policy import cli  # noqa: PLC0415

    if len(args.chain) < 2:
        print("a2a-broker: policy explain needs at least two agents (A B means A→B)")
        return 2
    return cli.explain(
        args.policy,
        args.chain[:-1],
        args.chain[-1],
        args.operation,
        args.skill,
        model_path=args.model or None,
    )


def _keys_generate(args: argparse.Namespace) -> int:
    from broker.keys import generate_signing_key_file  # noqa: PLC0415

    kid = generate_signing_key_file(Path(args.path), overwrite=args.overwrite)
    print(f"wrote {args.path} (kid {kid})")
    return 0


def _hash_credential(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token  # noqa: S105
    print(hashlib.sha256(token.encode()).hexdigest())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from broker.demo.launcher import run_demo  # noqa: PLC0415

    return run_demo(port=args.port, state_dir=args.state_dir)


def _demo_ask(args: argparse.Namespace) -> int:
    from broker.demo.ask import ask  # noqa: PLC0415

    return asyncio.run(ask(args.topic, args.state_dir, stream=not args.no_stream))


__all__ = ["ADMIN_TOKEN_ENV", "main"]
