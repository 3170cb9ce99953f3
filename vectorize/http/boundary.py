"""The HTTP boundary: what every request passes through before and after its handler.

Requests are counted by route, authenticated (a token maps to a PostgreSQL role and the jobs it
may see), checked (Host, content type, NUL bytes, strict JSON: no NaN, no Infinity, no
duplicate keys), and every error leaves as ``{"error": ...}`` JSON -- each kind of
core/errors.py as its status, and aiohttp's own refusals (oversized bodies, wrong methods,
unknown routes) too.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
from aiohttp import web

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core.errors import Invalid, Kind, VectorizeError
from vectorize.db.database import Connection
from vectorize.embedding.catalog import ModelCatalog
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.http.access import DAEMON, Principal, Tokens, is_loopback
from vectorize.service.query_embedding import QueryEmbedder

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.api")

POOL = web.AppKey("pool", psycopg_pool.AsyncConnectionPool[Connection])
CATALOG = web.AppKey("catalog", ModelCatalog)
QUERIES = web.AppKey("queries", QueryEmbedder)
SETTINGS = web.AppKey("settings", Settings)
#: The caller's rights (vectorize/access.py), set by the auth middleware.
PRINCIPAL = web.RequestKey("principal", Principal)
#: Response header of a search that asked for wait_for_sync: "true" when every change
#: committed before the request was embedded in time, "false" when the wait ran out.
FRESH_HEADER = "X-Vectorize-Fresh"
#: Which generation of the job ranked the results (a redefinition switches it).
GENERATION_HEADER = "X-Vectorize-Generation"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route pattern (not raw path, which would explode label values)."""
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    return response


#: Each kind of error as an HTTP status: the one place that knows.
HTTP_STATUS = {Kind.INVALID: 400, Kind.NOT_FOUND: 404, Kind.CONFLICT: 409, Kind.FORBIDDEN: 403, Kind.UNAVAILABLE: 503}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VectorizeError as exc:
        return error_response(HTTP_STATUS[exc.kind], exc.message)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(413, f"request body is larger than the limit of {limit} bytes")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(405, f"method {request.method} is not allowed on {request.path}; use {allowed}")
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return error_response(404, f"no route {request.method} {request.path}; see the README for the API")
    except web.HTTPException as exc:
        return error_response(exc.status, exc.reason)
    except psycopg.errors.QueryCanceled:
        log.warning("event=statement_timeout path=%s", request.path)
        return error_response(503, "the query ran longer than the API allows (VECTORIZE_STATEMENT_TIMEOUT); retry, or narrow it")
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        log.warning("event=database_unavailable path=%s error=%s", request.path, type(exc).__name__)
        return error_response(503, "the database is unavailable; retry shortly")
    except EmbedderUnavailable as exc:
        # The detail (a remote API's URL and answer) goes to the log, never to the client.
        log.warning("event=embedder_unavailable path=%s error=%r", request.path, str(exc))
        return error_response(503, "the job's embedding model is unavailable; retry shortly")
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("event=internal_error request=%s path=%s", request_id, request.path)
        return error_response(500, f"internal error; see the server log for request {request_id}")


def auth_middleware(tokens: Tokens) -> Any:
    """Find the caller's rights from its bearer token (see vectorize/access.py)."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/health/live":
            return await handler(request)
        principal = tokens.principal(request.headers.get("Authorization", ""))
        if principal is None:
            return error_response(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'")
        request[PRINCIPAL] = principal
        return await handler(request)

    return check_token


def boundary_middleware(settings: Settings) -> Any:
    """What reaches a handler came from where it should: a Host this API serves (a page that
    rebinds its own DNS name to 127.0.0.1 sends its own name), a JSON body declared as JSON (a
    cross-site form or fetch cannot send application/json without the browser asking first), and
    no NUL in the path (PostgreSQL text cannot hold it)."""
    allowed = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
    check_host = bool(allowed) or is_loopback(settings.host)
    allowed |= {settings.host.lower(), "localhost", "127.0.0.1", "[::1]", "::1"}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if check_host:
            host = (request.host or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in allowed:
                return error_response(421, f"this API does not serve the host {name!r}; add it to VECTORIZE_ALLOWED_HOSTS")
        if "\x00" in request.path:
            return error_response(400, "the path contains a NUL character")
        if request.method in ("POST", "PUT", "PATCH") and request.can_read_body:
            kind = request.content_type
            if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
                return error_response(415, f"send the body as JSON, with 'Content-Type: application/json' (got {kind!r})")
        return await handler(request)

    return check


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is too large")
    return value


async def json_body(request: web.Request) -> Any:
    """The body as JSON: strict (no NaN, Infinity or overflowing numbers), any nesting refused
    with a 400 rather than a crash."""
    raw = await request.read()
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Invalid(f"the request body is not valid JSON: {message}") from None


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, DAEMON)
