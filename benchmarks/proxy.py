"""The mediation floor: a minimal pass-through proxy built like the broker's edge.

    python -m benchmarks.proxy --port N --upstream URL --client aiohttp|httpx

One Litestar route, ``POST /agents/{name}/jsonrpc``, reads the body and relays its bytes to
``URL`` through one pooled client, then relays the answer's bytes back. No authentication, no
parsing, no store: what any Litestar proxy pays, so the broker's own cost is the difference.
Run under uvicorn with uvloop and httptools, exactly as ``a2a-broker serve`` runs.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State

POOL_SIZE = 256  # the broker's default [limits] upstream_pool_size
Relay = Callable[[bytes, str], Awaitable[tuple[int, bytes, str]]]


@asynccontextmanager
async def aiohttp_relay(url: str) -> AsyncIterator[Relay]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=POOL_SIZE)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, trust_env=False
    ) as session:

        async def relay(body: bytes, content_type: str) -> tuple[int, bytes, str]:
            headers = {"content-type": content_type}
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                return resp.status, data, resp.headers.get("content-type", "application/json")

        yield relay


@asynccontextmanager
async def httpx_relay(url: str) -> AsyncIterator[Relay]:
    import httpx

    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=30.0) as client:

        async def relay(body: bytes, content_type: str) -> tuple[int, bytes, str]:
            resp = await client.post(url, content=body, headers={"content-type": content_type})
            return resp.status_code, resp.content, resp.headers.get("content-type", "")

        yield relay


CLIENTS = {"aiohttp": aiohttp_relay, "httpx": httpx_relay}


def create_app(upstream_url: str, client: str) -> Litestar:
    relays: list[Relay] = []

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with CLIENTS[client](upstream_url) as relay:
            relays.append(relay)
            yield

    @post(["/agents/{name:str}/jsonrpc"], status_code=200)
    async def jsonrpc(request: Request[Any, Any, State], name: str) -> Response[bytes]:
        body = await request.body()
        ctype = request.headers.get("content-type", "application/json")
        status, data, media_type = await relays[0](body, ctype)
        return Response(data, status_code=status, media_type=media_type)

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[jsonrpc, healthz],
        lifespan=[lifespan],
        openapi_config=None,
        debug=False,
        logging_config=None,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's JSON-RPC URL")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.client),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
