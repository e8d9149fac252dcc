"""Helpers for agents built with a2a-sdk 1.3.0: pass the broker's delegation token on, and check it.

The broker sends every forwarded request with ``A2A-Delegation: <token>``. An agent that calls
another agent while working on that request presents the same token back to the broker, so the
broker can extend the chain. One line on each side does it::

    app = capture_delegation(Starlette(routes=[...]))           # server: remember the token
    client = ClientFactory(config).create(card, interceptors=[DelegationInterceptor()])  # client

The same two lines pass the request's W3C trace context (``traceparent``, ``tracestate``) on with
the token, unless the call already carries one (an agent that traces its own calls), so the
broker puts the whole delegation tree in one trace.

The server side keeps the token in a context variable for the duration of the request. a2a-sdk
runs ``AgentExecutor.execute`` in a copy of the context of the request that sent the message
(``ActiveTask.enqueue_request``), so the token is visible there and in any task ``execute``
starts, streaming or not, even after a non-blocking request has returned.

This module imports only a2a-sdk, PyJWT, httpx and the standard library.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpx
import jwt
from a2a.client.client import ClientCallContext
from a2a.client.interceptors import AfterArgs, BeforeArgs, ClientCallInterceptor
from jwt.api_jwk import PyJWK, PyJWKSet

from a2a_broker_agent.headers import DELEGATION_HEADER, DELEGATION_TOKEN_TYPE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER_NAME = DELEGATION_HEADER.lower().encode("latin-1")
_current: ContextVar[str | None] = ContextVar("a2a_delegation", default=None)
# The W3C trace context of the request being served (``traceparent``, ``tracestate``): passed
# on with the token, so the broker puts the agent's onward calls in the caller's trace.
TRACE_HEADERS = ("traceparent", "tracestate")
_TRACE_NAMES = tuple(name.encode("latin-1") for name in TRACE_HEADERS)
_trace: ContextVar[dict[str, str]] = ContextVar("a2a_trace_context", default={})  # noqa: B039


# --- server side: capture the inbound token ------------------------------------------------------


def current_delegation() -> str | None:
    """The delegation token of the request being served, or None outside one (or without)."""
    return _current.get()


@contextmanager
def delegation_context(token: str | None) -> Iterator[None]:
    """Make ``token`` the current delegation token inside the ``with`` block (e.g. in a worker
    that resumes a task outside the request that started it)."""
    reset = _current.set(token)
    try:
        yield
    finally:
        _current.reset(reset)


class DelegationCaptureMiddleware:
    """Pure ASGI middleware: each HTTP request runs with its ``A2A-Delegation`` header as the
    current delegation token. No header, or more than one, means no token. Responses (and SSE
    streams) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reset = _trace.set(_inbound_trace(scope))
        try:
            with delegation_context(_inbound_token(scope)):
                await self.app(scope, receive, send)
        finally:
            _trace.reset(reset)


def capture_delegation(app: ASGIApp) -> ASGIApp:
    """``app`` wrapped so that every request's delegation token is captured (one line)."""
    return DelegationCaptureMiddleware(app)


def current_trace_context() -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) of the request being served, or {}."""
    return dict(_trace.get())


def _inbound_trace(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        lowered = bytes(name).lower()
        if lowered in _TRACE_NAMES:
            found[lowered.decode("latin-1")] = bytes(value).decode("latin-1").strip()
    return found if "traceparent" in found else {}


def _inbound_token(scope: Scope) -> str | None:
    values = [value for name, value in scope.get("headers", ()) if name.lower() == _HEADER_NAME]
    if len(values) != 1:
        return None
    token = bytes(values[0]).decode("latin-1").strip()
    return token or None


# --- client side: present it on every outgoing call ----------------------------------------------


def with_delegation(context: ClientCallContext | None, token: str) -> ClientCallContext:
    """A copy of ``context`` (or a new one) whose service parameters carry ``token``."""
    parameters = dict(context.service_parameters or {}) if context else {}
    for name in [name for name in parameters if name.lower() == DELEGATION_HEADER.lower()]:
        del parameters[name]
    parameters[DELEGATION_HEADER] = token
    if context is None:
        return ClientCallContext(service_parameters=parameters)
    return context.model_copy(update={"service_parameters": parameters})


def _with_parameters(
    context: ClientCallContext | None, parameters: dict[str, str]
) -> ClientCallContext:
    if context is None:
        return ClientCallContext(service_parameters=parameters)
    return context.model_copy(update={"service_parameters": parameters})


class DelegationInterceptor(ClientCallInterceptor):
    """Adds the current delegation token as ``A2A-Delegation`` to every call of an a2a-sdk
    client, unary and streaming alike (the SDK turns service parameters into HTTP headers).
    Outside a request with a token it adds nothing: the call then originates new work."""

    def __init__(self, source: Callable[[], str | None] = current_delegation) -> None:
        self._source = source

    async def before(self, args: BeforeArgs) -> None:
        token = self._source()
        if token:
            args.context = with_delegation(args.context, token)
        trace = _trace.get()
        if trace:  # the caller's trace goes on, unless the agent traces its calls itself
            parameters = dict(args.context.service_parameters or {}) if args.context else {}
            if not any(name.lower() == "traceparent" for name in parameters):
                parameters.update(trace)
                args.context = _with_parameters(args.context, parameters)

    async def after(self, args: AfterArgs) -> None:
        return None


def delegating_http_client(credential: str | None = None, **options: Any) -> httpx.AsyncClient:
    """An httpx client for calls through the broker: ``Authorization: Bearer <credential>`` and,
    on every request sent while serving one, its ``A2A-Delegation`` token (unless the request
    sets the header itself). An alternative to the interceptor that also covers card fetches;
    ``options`` go to ``httpx.AsyncClient``."""
    headers = httpx.Headers(options.pop("headers", None))
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    hooks = dict(options.pop("event_hooks", None) or {})
    hooks["request"] = [*hooks.get("request", []), _add_delegation_header]
    return httpx.AsyncClient(headers=headers, event_hooks=hooks, **options)


async def _add_delegation_header(request: httpx.Request) -> None:
    token = current_delegation()
    if token and DELEGATION_HEADER not in request.headers:
        request.headers[DELEGATION_HEADER] = token
    if "traceparent" not in request.headers:
        request.headers.update(_trace.get())


# --- verifying that a request came through the broker --------------------------------------------


class BrokerTokenError(Exception):
    """Base of the errors ``verify_broker_token`` raises."""


class BrokerTokenInvalidError(BrokerTokenError):
    """Malformed, not a delegation token, signed by an unknown key, bad signature, wrong issuer."""


class BrokerTokenAudienceError(BrokerTokenError):
    """Genuine, but minted for another agent: someone is replaying it."""


class BrokerTokenExpiredError(BrokerTokenError):
    """Genuine, but past its expiry."""


class BrokerJwksUnavailableError(BrokerTokenError):
    """The broker's JWKS could not be fetched or read; the token could not be checked."""


class BrokerJwks:
    """The broker's public keys, fetched from its JWKS ``url`` and cached for ``max_age_s``.

    An unknown ``kid`` (the broker rotated its key) triggers a refetch, at most once every
    ``min_refresh_s``. Holds no event-loop state, so one instance can serve any loop.
    """

    def __init__(self, url: str, *, max_age_s: float = 300.0, min_refresh_s: float = 10.0) -> None:
        self.url = url
        self._max_age_s = max_age_s
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = -float("inf")

    async def key(self, kid: str) -> PyJWK:
        """The public key named ``kid``. Raises ``BrokerTokenInvalidError`` if the broker does not
        publish it, ``BrokerJwksUnavailableError`` if the JWKS cannot be fetched."""
        age = time.monotonic() - self._fetched_at
        if age > self._max_age_s or (kid not in self._keys and age > self._min_refresh_s):
            self._keys = await _fetch_jwks(self.url)
            self._fetched_at = time.monotonic()
        if kid not in self._keys:
            raise BrokerTokenInvalidError("the token is not signed by a key the broker publishes")
        return self._keys[kid]


_jwks_by_url: dict[str, BrokerJwks] = {}


async def verify_broker_token(
    token: str,
    jwks: Mapping[str, Any] | str | BrokerJwks,
    audience: str,
    issuer: str | None = None,
    *,
    leeway_s: float = 0.0,
) -> dict[str, Any]:
    """The claims of a delegation token, once it is shown to come from the broker, for ``audience``.

    ``jwks`` is the broker's JWKS (a dict), its URL (fetched and cached per URL) or a
    ``BrokerJwks``; ``audience`` is this agent's name at the broker; ``issuer`` the broker's
    public URL, checked when given. Raises ``BrokerTokenInvalidError`` (malformed, wrong type,
    unknown key, bad signature, wrong issuer), ``BrokerTokenAudienceError`` (minted for another
    agent), ``BrokerTokenExpiredError`` or ``BrokerJwksUnavailableError``. Expiry is checked
    before the audience. The work's deadline is the ``dl`` claim (epoch seconds).
    """
    kid = _delegation_kid(token)
    key = await _key_for(jwks, kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            audience=audience,
            issuer=issuer,
            leeway=leeway_s,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise BrokerTokenExpiredError("the delegation token has expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise BrokerTokenAudienceError(f"the delegation token is not for {audience!r}") from exc
    except jwt.PyJWTError as exc:
        raise BrokerTokenInvalidError(f"the delegation token does not verify: {exc}") from exc
    return claims


def _delegation_kid(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise BrokerTokenInvalidError("the delegation token is not a JWT") from exc
    if header.get("typ") != DELEGATION_TOKEN_TYPE or not isinstance(header.get("kid"), str):
        raise BrokerTokenInvalidError("the token is not a broker delegation token")
    return str(header["kid"])


async def _key_for(jwks: Mapping[str, Any] | str | BrokerJwks, kid: str) -> PyJWK:
    if isinstance(jwks, str):
        jwks = _jwks_by_url.setdefault(jwks, BrokerJwks(jwks))
    if isinstance(jwks, BrokerJwks):
        return await jwks.key(kid)
    keys = _read_jwks(jwks)
    if kid not in keys:
        raise BrokerTokenInvalidError("the token is not signed by a key the broker publishes")
    return keys[kid]


async def _fetch_jwks(url: str) -> dict[str, PyJWK]:
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.get(url)
            response.raise_for_status()
            document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BrokerJwksUnavailableError(f"cannot fetch the broker's JWKS from {url}") from exc
    return _read_jwks(document)


def _read_jwks(document: Any) -> dict[str, PyJWK]:
    try:
        key_set = PyJWKSet.from_dict(dict(document))
    except (jwt.PyJWTError, TypeError, ValueError) as exc:
        raise BrokerJwksUnavailableError("the broker's JWKS holds no usable key") from exc
    return {key.key_id: key for key in key_set.keys if key.key_id}
