"""The task-route store the broker runs on: claims that survive an outage, conflicts audited."""

from __future__ import annotations

import logging

import msgspec

from broker.audit.recorder import AuditRecorder
from broker.errors import BrokerError
from broker.late_writes import LateWrites
from broker.stores.base import Stores, TaskRoute
from broker.stores.late_routes import LateTaskRoutes

log = logging.getLogger("a2a_broker.routes")


def with_late_routes(stores: Stores, late: LateWrites, audit: AuditRecorder) -> Stores:
    """``stores`` whose route claims survive a store outage after the agent answered; a claim
    that lands late on another caller's task is logged and audited."""

    async def report(route: TaskRoute) -> None:
        log.error(
            "task id collision found late: %s at %s belongs to another caller; %s never gets it",
            route.task_id,
            route.agent,
            route.owner,
        )
        try:
            await audit.event(
                "task.route_conflict",
                "a2a-broker",
                agent=route.agent,
                task_id=route.task_id,
                claimant=route.owner,
            )
        except BrokerError as err:
            log.error("late task route conflict not audited: %s", err.reason)  # noqa: TRY400

    routes = LateTaskRoutes(stores.task_routes, late, report)
    return msgspec.structs.replace(stores, task_routes=routes)
