"""``a2a-broker approvals list|show|approve|deny``: the approval queue from the shell.

``list`` and ``show`` take the admin token or an approver's token; ``approve`` and ``deny``
take the approver's own token (``--approver-token`` or ``$A2A_BROKER_APPROVER_TOKEN``): it is
what names the person deciding, and the admin token names nobody.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any

from broker.cli.admin import _command, _group, _quoted, _run
from broker.cli.admin_client import call_admin
from broker.cli.output import EXIT_USAGE, Output, Table, key_values

APPROVER_TOKEN_ENV = "A2A_BROKER_APPROVER_TOKEN"  # noqa: S105 - a variable name
COLUMNS = ("id", "state", "requester", "target", "call", "expires_at", "approved_by")


def add_approvals_parser(sub: Any, default_url: str) -> None:
    cmds = _group(sub, "approvals", "calls waiting for a human's approval", default_url)
    lister = _command(cmds, "list", "the approvals (pending ones with --pending)", _list,
                      default_url)
    lister.add_argument("--pending", action="store_true", help="only those awaiting a decision")
    lister.add_argument("--approver-token", default=os.environ.get(APPROVER_TOKEN_ENV, ""),
                        help=f"use an approver's token (default: ${APPROVER_TOKEN_ENV})")
    for name, run, text in (
        ("show", _show, "one approval"),
        ("approve", _approve, "approve a held call (it is forwarded once the quorum is met)"),
        ("deny", _deny, "deny a held call (its task ends REJECTED)"),
    ):
        p = _command(cmds, name, text, run, default_url)
        p.add_argument("approval", help="the approval id (approval-...)")
        p.add_argument("--approver-token", default=os.environ.get(APPROVER_TOKEN_ENV, ""),
                       help=f"the approver's own token (default: ${APPROVER_TOKEN_ENV})")
        if name != "show":
            p.add_argument("--reason", default="", help="why (kept, audited and notified)")


def _as_approver(args: argparse.Namespace, required: bool) -> argparse.Namespace:
    if args.approver_token and (required or not args.admin_token):
        return argparse.Namespace(**{**vars(args), "admin_token": args.approver_token})
    if required:
        return argparse.Namespace(**{**vars(args), "admin_token": ""})
    return args


def approvals_table(body: Any) -> Iterable[Table]:
    yield Table(COLUMNS, [_row(a) for a in body["approvals"]])


def approval_table(body: Any) -> Iterable[Table]:
    yield key_values(body, title=f"approval {body['id']}")


def _row(approval: dict[str, Any]) -> tuple[Any, ...]:
    skill = approval.get("skill")
    call = f"{approval.get('operation')}:{skill}" if skill else approval.get("operation")
    return (approval["id"], approval["state"], approval["requester"], approval["target"], call,
            approval["expires_at"], approval["approved_by"])


def _list(args: argparse.Namespace) -> int:
    query = "?state=pending" if args.pending else ""
    who = _as_approver(args, required=False)
    return _run(args, lambda: call_admin(who, "GET", f"/approvals{query}"),
                lambda out, body: out.data(body, approvals_table))


def _show(args: argparse.Namespace) -> int:
    who = _as_approver(args, required=False)
    return _run(args, lambda: call_admin(who, "GET", f"/approvals/{_quoted(args.approval)}"),
                lambda out, body: out.data(body, approval_table))


def _decide(args: argparse.Namespace, decision: str) -> int:
    if not args.approver_token:
        out = Output.of(args)
        out.err.write(f"a2a-broker: no approver token: set ${APPROVER_TOKEN_ENV} or pass"
                      " --approver-token (the admin token names no person)\n")
        return EXIT_USAGE
    who = _as_approver(args, required=True)
    body = {"decision": decision, "reason": args.reason}
    return _run(
        args,
        lambda: call_admin(who, "POST", f"/approvals/{_quoted(args.approval)}", body),
        lambda out, answer: out.data(answer, approval_table),
        lambda answer: f"approval {args.approval}: {answer['state']}",
    )


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def _deny(args: argparse.Namespace) -> int:
    return _decide(args, "deny")
