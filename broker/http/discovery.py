"""Unauthenticated discovery (cards, JWKS, health) and the authenticated agent listing."""

from __future__ import annotations

import hashlib
from email.utils import formatdate

import msgspec
from litestar import Response, get
from litestar.params import FromPath

from broker.http.state import AnyRequest, runtime_of

_encoder = msgspec.json.Encoder()
CARD_CACHE_CONTROL = "public, max-age=60"


@get("/healthz", status_code=200)
async def healthz() -> Response[bytes]:
    return Response(b'{"status":"ok"}', media_type="application/json")


@get("/readyz", status_code=200)
async def readyz(request: AnyRequest) -> Response[bytes]:
    await runtime_of(request).backend.ping()  # StoreUnavailableError -> 503
    return Response(b'{"status":"ready"}', media_type="application/json")


@get("/.well-known/jwks.json", status_code=200)
async def jwks(request: AnyRequest) -> Response[bytes]:
    body = _encoder.encode(runtime_of(request).keys.jwks())
    return Response(
        body, media_type="application/jwk-set+json", headers={"cache-control": "max-age=300"}
    )


@get("/agents/{name:str}/.well-known/agent-card.json", status_code=200)
async def agent_card(request: AnyRequest, name: FromPath[str]) -> Response[bytes]:
    """The card as the broker serves it, with ETag / Last-Modified so clients can cache it."""
    directory = runtime_of(request).directory
    record = await directory.get(name)
    body = _encoder.encode(await directory.served_card(name))
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "etag": etag,
        "cache-control": CARD_CACHE_CONTROL,
        "last-modified": formatdate(record.updated_at, usegmt=True),
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(b"", status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@get("/agents", status_code=200)
async def list_agents(request: AnyRequest) -> Response[bytes]:
    """Discovery for a caller that knows only the broker's URL: the cards it may see.

    Until chain policy lands, every active agent is visible to every authenticated agent.
    """
    runtime = runtime_of(request)
    await runtime.authenticate.identify(request.headers.get("authorization"))
    cards = [
        {
            "name": r.name,
            "cardUrl": runtime.directory.broker_card_url(r.name),
            "card": await runtime.directory.served_card(r.name),
        }
        for r in await runtime.directory.list()
        if r.status == "active"
    ]
    return Response(_encoder.encode({"agents": cards}), media_type="application/json")
