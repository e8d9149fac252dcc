"""``a2a-broker policy check|explain``: argparse wiring for broker.cli.policy_commands.

Both read the policy the broker runs: ``[policy] policy_file`` and ``model_file`` of the config
(``--config``, else ``$A2A_BROKER_CONFIG``, as ``serve``), unless a file is named on the command
line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from broker.cli.output import EXIT_OK, EXIT_USAGE
from broker.settings import CONFIG_ENV, load_settings


def _command(cmds: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = cmds.add_parser(name, help=text, description=text)
    return parser


def add_policy_file_commands(cmds: Any, config_help: str) -> None:
    """``policy check`` and ``policy explain``: they read files, not a running broker."""
    check = _command(cmds, "check", "validate a policy file, as the broker would load it")
    check.add_argument(
        "path", nargs="?", help="the policy CSV (default: [policy] policy_file of the config)"
    )
    check.add_argument("--config", help=config_help)
    check.add_argument("--model", default="", help="model file (default: the config's, else ours)")
    check.set_defaults(run=_policy_check)
    explain = _command(
        cmds, "explain", "the decision for each hop of a chain, and the rule that decided it"
    )
    explain.add_argument(
        "chain", nargs="+",
        help="agents in order: A B C explains A→B→C; a last model:NAME explains an LLM call",
    )
    explain.add_argument(
        "--operation", default=None,
        help="the A2A operation of the hops (default SendMessage), or llm:chat / llm:embeddings"
        " for a call to a model:NAME target (the default for one)",
    )
    explain.add_argument(
        "--skill", default="",
        help="the skill the message asks for ('' when the broker cannot tell; rules name it as"
        " SendMessage:SKILL)",
    )
    explain.add_argument("--config", help=config_help + "; its [policy] files are explained")
    explain.add_argument("--policy", default="", help="a policy CSV instead of the config's")
    explain.add_argument(
        "--model", default="", help="model file (default: the config's, else model.conf beside"
        " --policy, else ours)"
    )
    explain.set_defaults(run=_policy_explain)


def _policy_files(args: argparse.Namespace, given: str | None) -> tuple[str, str | None] | None:
    """(policy file, model file or None) from the command line, else from the config; None when
    the config has no policy file."""
    if given:
        return given, args.model or None
    settings = load_settings(args.config)
    if not settings.policy.policy_file:
        return None
    model = args.model or (
        str(settings.path(settings.policy.model_file)) if settings.policy.model_file else None
    )
    return str(settings.path(settings.policy.policy_file)), model


def _no_policy(args: argparse.Namespace) -> int:
    where = args.config or os.environ.get(CONFIG_ENV) or "the default settings"
    print(
        f"no [policy] policy_file in {where}: the broker lets every authenticated agent call"
        " every agent and originate work"
    )
    return EXIT_OK


def _policy_check(args: argparse.Namespace) -> int:
    from broker.cli import policy_commands as cli  # noqa: PLC0415

    files = _policy_files(args, args.path)
    if files is None:
        return _no_policy(args)
    return cli.check(files[0], model_path=files[1])


def _policy_explain(args: argparse.Namespace) -> int:
    from broker.cli import policy_commands as cli  # noqa: PLC0415

    if len(args.chain) < 2:
        print("a2a-broker: policy explain needs at least two names (A B means A→B)",
              file=sys.stderr)
        return EXIT_USAGE
    files = _policy_files(args, args.policy)
    if files is None:
        return _no_policy(args)
    target = args.chain[-1]
    operation = args.operation or ("llm:chat" if target.startswith("model:") else "SendMessage")
    return cli.explain(
        files[0], args.chain[:-1], target, operation, args.skill, model_path=files[1]
    )
