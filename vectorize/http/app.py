"""The HTTP shim: parse the request, call one use case, serialise the answer. What every request
passes through first (authentication, the boundary's checks, errors as JSON) is boundary.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from aiohttp import web

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core import job_definition
from vectorize.core.errors import Invalid
from vectorize.db.database import Pool
from vectorize.db.queries import query
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.http.access import Tokens, load_tokens
from vectorize.http.boundary import (
    CATALOG,
    FRESH_HEADER,
    GENERATION_HEADER,
    POOL,
    QUERIES,
    SETTINGS,
    Handler,
    auth_middleware,
    boundary_middleware,
    error_middleware,
    json_body,
    metrics_middleware,
    principal_of,
)
from vectorize.http.openapi import SPEC
from vectorize.service import jobs, search
from vectorize.service.dry_run import plan
from vectorize.service.provider_models import ensure_registered
from vectorize.service.query_embedding import QueryEmbedder

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.api")


def _dry_run(request: web.Request) -> bool:
    raw = request.query.get("dry_run", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Invalid(f"dry_run must be true or false, got {raw!r}")
    return raw in ("true", "1")


async def create_table(request: web.Request) -> web.Response:
    dry_run = _dry_run(request)
    definition = job_definition.parse(await json_body(request))
    principal = principal_of(request)
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
    body = await json_body(request)
    if isinstance(body, dict):
        if body.get("job_name", job_name) != job_name:
            raise Invalid(
                f"job_name {body['job_name']!r} in the body differs from {job_name!r} in the path; a job cannot be renamed"
            )
        body = {**body, "job_name": job_name}
    definition = job_definition.parse(body)
    principal = principal_of(request)
    principal.require_manage(job_name)
    await ensure_registered(request.app[POOL], request.app[CATALOG], definition.get("model"))
    if dry_run:
        return web.json_response(await plan(request.app[POOL], request.app[CATALOG], definition, redefine=True))
    keep = request.app[SETTINGS].generation_keep_seconds
    answer = await jobs.redefine_job(request.app[POOL], definition, keep, principal.role)
    return web.json_response(answer, status=202 if answer["action"] == "building" else 200)


async def rollback_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = principal_of(request)
    principal.require_manage(job_name)
    keep = request.app[SETTINGS].generation_keep_seconds
    return web.json_response(await jobs.rollback_job(request.app[POOL], job_name, keep, principal.role))


async def list_tables(request: web.Request) -> web.Response:
    principal = principal_of(request)
    listed = await jobs.list_jobs(request.app[POOL], principal.role)
    return web.json_response([job for job in listed if principal.may_see(job["job_name"])])


async def show_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = principal_of(request)
    principal.require_job(job_name)
    return web.json_response(await jobs.show_job(request.app[POOL], job_name, role=principal.role))


async def delete_table(request: web.Request) -> web.Response:
    job_name = request.match_info["job_name"]
    principal = principal_of(request)
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
    principal = principal_of(request)
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
    body = await json_body(request)
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
