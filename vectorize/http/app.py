"""The HTTP shim: parse the request, call one domain function, serialise the answer.

Every error leaves as ``{"error": ...}`` JSON, including malformed JSON, unknown
routes, wrong methods, oversized bodies and a database that is away.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from aiohttp import web

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core import job_definition
from vectorize.core.errors import Invalid, Kind, VectorizeError
from vectorize.db.database import Connection, Pool
from vectorize.db.queries import query
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.http.access import DAEMON, Principal, Tokens, is_loopback, load_tokens
from vectorize.http.openapi import SPEC
from vectorize.service import jobs, search
from vectorize.service.dry_run import plan
from vectorize.service.provider_models import ensure_registered
from vectorize.service.query_embedding import QueryEmbedder

log = logging.getLogger(__name__)

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


def _error(status: int, message: str) -> web.Response:
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
        return _error(HTTP_STATUS[exc.kind], exc.message)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return _error(413, f"request body is larger than the limit of {limit} bytes")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = _error(405, f"method {request.method} is not allowed on {request.path}; use {allowed}")
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return _error(404, f"no route {request.method} {request.path}; see the README for the API")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)
    except psycopg.errors.QueryCanceled:
        log.warning("event=statement_timeout path=%s", request.path)
        return _error(503, "the query ran longer than the API allows (VECTORIZE_STATEMENT_TIMEOUT); retry, or narrow it")
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        log.warning("event=database_unavailable path=%s error=%s", request.path, type(exc).__name__)
        return _error(503, "the database is unavailable; retry shortly")
    except EmbedderUnavailable as exc:
        # The detail (a remote API's URL and answer) goes to the log, never to the client.
        log.warning("event=embedder_unavailable path=%s error=%r", request.path, str(exc))
        return _error(503, "the job's embedding model is unavailable; retry shortly")
    except Exception:
        request_id = uuid.uuid4().hex[:12]
        log.exception("event=internal_error request=%s path=%s", request_id, request.path)
        return _error(500, f"internal error; see the server log for request {request_id}")


def auth_middleware(tokens: Tokens) -> Any:
    """Find the caller's rights from its bearer token (see vectorize/access.py)."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/health/live":
            return await handler(request)
        principal = tokens.principal(request.headers.get("Authorization", ""))
        if principal is None:
            return _error(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'")
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
                return _error(421, f"this API does not serve the host {name!r}; add it to VECTORIZE_ALLOWED_HOSTS")
        if "\x00" in request.path:
            return _error(400, "the path contains a NUL character")
        if request.method in ("POST", "PUT", "PATCH") and request.can_read_body:
            kind = request.content_type
            if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
                return _error(415, f"send the body as JSON, with 'Content-Type: application/json' (got {kind!r})")
        return await handler(request)

    return check


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is too large")
    return value


async def _json_body(request: web.Request) -> Any:
    """The body as JSON: strict (no NaN, Infinity or overflowing numbers), any nesting refused
    with a 400 rather than a crash."""
    raw = await request.read()
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Invalid(f"the request body is not valid JSON: {message}") from None


def _principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, DAEMON)


def _dry_run(request: web.Request) -> bool:
    raw = request.query.get("dry_run", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Invalid(f"dry_run must be true or false, got {raw!r}")
    return raw in ("true", "1")


async def create_table(request: web.Request) -> web.Response:
    dry_run = _dry_run(request)
    definition = job_definition.parse(await _json_body(request))
    principal = _principal(request)
    principal.require_manage(definition["job_name"])
    await ensure_registered(request.app[POOL], request.app[CATALOG], definition.get("model"))
    if dry_run:
        return web.json_response(await plan(request.app[POOL], request.app[CATALOG], definition, redefine=False))
    job_id = await jobs.create_job(request.app[POOL], definition, principal.role)
    return web.json_response({"id": job_id})


async def redefine_table(request: web.Request) -> web.Response:
    """PUT: the job's full new definition; 202 while the new generation is built."""
    dry_run = _dry_run(request)
    job_name = request.match_info["job_name"]
    body = await _json_body(request)
    if isinstance(body, dict):
        if body.get("job_name", job_name) != job_name:
            raise Invalid(
                f"job_name {body['job_name']!r} in the body differs from {job_name!r} in the path; a job cannot be renamed"
            )
        body = {**body, "job_name": job_name}
    definition = job_definition.parse(body)
    principal = _principal(request)
    principal.require_manage(job_name)
    await ensure_registered(request.app[POOL], request.app[CATALOG], definition.get("model"))
    if dry_run:
        return web.json_response(await plan(request.app[POOL], request.app[CATALOG], definition, redefine=True))
    keep = request.app[SETTINGS].generation_keep_seconds
    answer = await jobs.redefine_job(request.app[POOL], definition, keep, principal.role)
    return web.json_response(answer, status=202 if answer["action"] == "building" else 200)


async def rollback_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = _principal(request)
    principal.require_manage(job_name)
    keep = request.app[SETTINGS].generation_keep_seconds
    return web.json_response(await jobs.rollback_job(request.app[POOL], job_name, keep, principal.role))


async def list_tables(request: web.Request) -> web.Response:
    principal = _principal(request)
    listed = await jobs.list_jobs(request.app[POOL], principal.role)
    return web.json_response([job for job in listed if principal.may_see(job["job_name"])])


async def show_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = _principal(request)
    principal.require_job(job_name)
    return web.json_response(await jobs.show_job(request.app[POOL], job_name, role=principal.role))


async def delete_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = _principal(request)
    principal.require_manage(job_name)
    await jobs.delete_job(request.app[POOL], job_name, principal.role)
    return web.json_response({"job_name": job_name, "message": f"job {job_name} and its embeddings were deleted"})


@dataclass
class SearchArgs:
    job_name: str
    text: str
    limit: int
    ranking: dict[str, float]
    wait: float | None
    return_columns: list[str] | None
    ef_search: int | None
    window_size: int | None


def _search_args(params: dict[str, Any]) -> tuple[SearchArgs, dict[str, Any]]:
    """Split search parameters into the search's own and (the rest) filters."""
    job_name = params.pop("job_name", None)
    text = params.pop("query", None)
    limit = search.parse_limit(params.pop("limit", None))
    ranking = search.parse_ranking(params)
    wait = search.parse_wait_for_sync(params.pop("wait_for_sync", None))
    return_columns = search.parse_return_columns(params.pop("return_columns", None))
    ef_search = search.parse_ef_search(params.pop("ef_search", None))
    window_size = search.parse_window_size(params.pop("window_size", None))
    if not isinstance(job_name, str) or not job_name:
        raise Invalid("job_name is required: the job to search")
    if not isinstance(text, str) or not text:
        raise Invalid("query is required: the text to search for")
    return SearchArgs(job_name, text, limit, ranking, wait, return_columns, ef_search, window_size), params


async def _search_response(request: web.Request, args: SearchArgs, filters: dict) -> web.Response:
    """Wait for the job to catch up when asked (read-your-writes), then search."""
    pool = request.app[POOL]
    principal = _principal(request)
    principal.require_job(args.job_name)
    fresh = None if args.wait is None else await search.wait_until_synced(pool, args.job_name, args.wait)
    answer = await search.search(
        pool,
        request.app[QUERIES],
        args.job_name,
        args.text,
        args.limit,
        filters,
        args.ranking,
        args.return_columns,
        args.ef_search,
        role=principal.role,
        window_size=args.window_size,
    )
    response = web.Response(text=answer.json_array(), content_type="application/json")
    response.headers[GENERATION_HEADER] = str(answer.generation)
    if fresh is not None:
        response.headers[FRESH_HEADER] = "true" if fresh else "false"
    return response


async def search_get(request: web.Request) -> web.Response:
    params: dict[str, Any] = {}
    for key, value in request.query.items():
        if key in params:
            raise Invalid(f"query parameter {key!r} is given more than once")
        params[key] = value
    args, filters = _search_args(params)
    return await _search_response(request, args, filters)


async def search_post(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object with job_name, query, limit and filters")
    allowed = {
        "job_name",
        "query",
        "limit",
        "filters",
        "wait_for_sync",
        "return_columns",
        "ef_search",
        "window_size",
        *search.RANKING_OPTIONS,
    }
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}; search takes {', '.join(sorted(allowed))}")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise Invalid('filters must be a JSON object of column: value or column: "op.value"')
    args, _ = _search_args({k: v for k, v in body.items() if k != "filters"})
    return await _search_response(request, args, filters)


async def _database_ok(pool: Pool) -> bool:
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute(query("ping"))
        return True
    except (psycopg.Error, psycopg_pool.PoolTimeout):
        return False


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics.update_job_gauges(await jobs.job_gauges(request.app[POOL]))
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(SPEC)


async def health(request: web.Request) -> web.Response:
    database = await _database_ok(request.app[POOL])
    body = {"status": "ok" if database else "degraded", "database": database}
    return web.json_response(body, status=200 if database else 503)


async def health_live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def health_ready(request: web.Request) -> web.Response:
    database = await _database_ok(request.app[POOL])
    model = True
    try:
        request.app[CATALOG].get(DEFAULT_MODEL)
    except Exception:  # the model failed to load: not ready
        model = False
    ready = database and model
    return web.json_response(
        {"status": "ready" if ready else "not ready", "database": database, "model": model}, status=200 if ready else 503
    )


#: Every route: method, path, handler.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/api/v1/table", create_table),
    ("GET", "/api/v1/table", list_tables),
    ("GET", "/api/v1/table/{job_name}", show_table),
    ("PUT", "/api/v1/table/{job_name}", redefine_table),
    ("POST", "/api/v1/table/{job_name}/rollback", rollback_table),
    ("DELETE", "/api/v1/table/{job_name}", delete_table),
    ("GET", "/api/v1/search", search_get),
    ("POST", "/api/v1/search", search_post),
    ("GET", "/metrics", metrics_endpoint),
    ("GET", "/api/v1/openapi.json", openapi_document),
    ("GET", "/health", health),
    ("GET", "/health/live", health_live),
    ("GET", "/health/ready", health_ready),
]


#: Request-line and header limits handed to aiohttp's parser. Requests within them get
#: our JSON errors; beyond them aiohttp itself answers a plain-text 400 before any
#: handler runs (64 KiB of query string is far more than any search needs).
HTTP_PARSER_LIMITS: dict[str, Any] = {"max_line_size": 65536, "max_field_size": 65536}


def api_tokens(settings: Settings) -> Tokens:
    """The tokens the API accepts, from VECTORIZE_API_TOKEN and the VECTORIZE_API_TOKENS file."""
    return Tokens(settings.api_token, load_tokens(settings.api_tokens) if settings.api_tokens else None)


def create_app(settings: Settings, pool: Pool, catalog: ModelCatalog) -> web.Application:
    """The API over an opened (or to-be-opened) pool; the caller owns both resources."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, boundary_middleware(settings), auth_middleware(api_tokens(settings))],
        client_max_size=settings.max_body_bytes,
    )
    app[POOL] = pool
    app[CATALOG] = catalog
    app[QUERIES] = QueryEmbedder(catalog)
    app[SETTINGS] = settings
    for method, path, handler in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)  # and HEAD, as aiohttp adds it to a GET
        else:
            app.router.add_route(method, path, handler)
    return app
