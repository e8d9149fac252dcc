"""``/admin/alerts``: the anomaly alerts kept for operators (list, acknowledge).

The console's alerts page calls these same handlers (decision 0051). An acknowledgement is
audited (``alert.ack``) and shared: with Redis, every replica lists it acknowledged.
"""

from __future__ import annotations

import msgspec
from litestar import Response, Router, get, post
from litestar.params import FromPath

from broker.errors import AlertNotFoundError, InvalidAdminRequestError
from broker.http.admin import admin_guard
from broker.http.state import AnyRequest, runtime_of

MAX_LISTED = 1000
_encoder = msgspec.json.Encoder()


def _json(data: object, status: int = 200) -> Response[bytes]:
    return Response(_encoder.encode(data), status_code=status, media_type="application/json")


@get("/")
async def list_alerts(request: AnyRequest) -> Response[bytes]:
    """The newest alerts (``?limit=``, at most 1000, default 200), newest first."""
    alerts = runtime_of(request).alerts
    try:
        limit = int(request.query_params.get("limit", "200"))
    except ValueError:
        raise InvalidAdminRequestError("limit must be a whole number") from None
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidAdminRequestError(f"limit must be between 1 and {MAX_LISTED}")
    if alerts is None:
        return _json({"enabled": False, "alerts": []})
    found = await alerts.state.recent(limit)
    return _json({"enabled": True, "alerts": [msgspec.to_builtins(a) for a in found]})


@post("/{alert_id:str}/ack", status_code=200)
async def acknowledge_alert(request: AnyRequest, alert_id: FromPath[str]) -> Response[bytes]:
    alerts = runtime_of(request).alerts
    if alerts is None or not await alerts.acknowledge(alert_id[:64], "admin"):
        raise AlertNotFoundError()
    return _json({"acknowledged": alert_id})


alerts_router = Router(
    path="/admin/alerts",
    guards=[admin_guard],
    route_handlers=[list_alerts, acknowledge_alert],
)
