"""The OpenAPI 3 description of the HTTP API, served at /api/v1/openapi.json.

tests/test_openapi.py runs schemathesis against the live app, so this document
and the real responses cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from vectorize.core.job_definition import BY_NAME, DEFINITION, FIELDS, REQUIRED, SETTINGS, json_schema
from vectorize.service.search import MAX_LIMIT, MAX_WAIT_FOR_SYNC, MAX_WINDOW, RANKING_OPTIONS

_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME = {"type": "string", "minLength": 1}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "the request is malformed or breaks a rule; the message names what and how to fix it",
        401: "missing or wrong bearer token (only when VECTORIZE_API_TOKEN is set)",
        403: "the database role may not read the source table",
        404: "no such job, schema, table or column",
        409: "a job with this name exists with a different definition",
        413: "request body larger than the limit",
        500: "internal error; the message names a request id to find in the server log",
        503: "the database, or the job's embedding model, is unavailable",
    }
    return {
        str(status): {"description": reasons[status], "content": {"application/json": {"schema": _ERROR}}}
        for status in (*statuses, 401, 500, 503)
    }


def _typed(*, nullable: bool = False, **kinds: str) -> dict[str, Any]:
    """Properties that are just a JSON type each (and may be null, if ``nullable``)."""
    return {name: {"type": kind, "nullable": True} if nullable else {"type": kind} for name, kind in kinds.items()}


def _stored(*names: str) -> dict[str, Any]:
    """Definition fields as a job's status reports them: their JSON types, from the definition."""
    fields = [BY_NAME[name] for name in names]
    return {f.name: {k: v for k, v in json_schema(f).items() if k in ("type", "items", "nullable")} for f in fields}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SEARCH_PARAMS = [
    {"name": "job_name", "in": "query", "required": True, "schema": _NAME},
    {"name": "query", "in": "query", "required": True, "schema": _NAME},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 10}},
    *(
        {"name": name, "in": "query", "schema": {"type": "number", "minimum": 0, "default": default}}
        for name, default in RANKING_OPTIONS.items()
    ),
    {
        "name": "return_columns",
        "in": "query",
        "description": "comma-separated source columns each result carries (default: the job's return_columns, else all)",
        "schema": {"type": "string", "minLength": 1},
    },
    {
        "name": "ef_search",
        "in": "query",
        "description": "HNSW candidates kept while searching: higher finds more of the true nearest rows, slower",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    {
        "name": "window_size",
        "in": "query",
        "description": "candidates each half (vector, full-text) ranks before they are fused (pg_vectorize's; default 5 x limit)",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW},
    },
    {
        "name": "wait_for_sync",
        "in": "query",
        "description": "Read-your-writes: wait up to this many seconds until every change to the job's table committed "
        "before the request is embedded. The X-Vectorize-Fresh response header says whether it was.",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_FOR_SYNC},
    },
]
_DRY_RUN = {
    "name": "dry_run",
    "in": "query",
    "description": "check everything and answer what the request would do and cost; create and change nothing",
    "schema": {"type": "boolean", "default": False},
}
_FRESH = {
    "X-Vectorize-Fresh": {
        "description": "Only with wait_for_sync: true when every change committed before the request was embedded "
        "in time, false when the wait ran out first",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "X-Vectorize-Generation": {
        "description": "the generation of the job that ranked the results (a redefinition switches it)",
        "schema": {"type": "string"},
    },
}


def _search_responses(*statuses: int) -> dict[str, Any]:
    results = _json({"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}}, "best first")
    return {"200": {**results, "headers": _FRESH}, **_errors(*statuses)}


def _health_responses(good: str, bad: str) -> dict[str, Any]:
    health = {"$ref": "#/components/schemas/Health"}
    return {"200": _json(health, good), "503": _json(health, bad), "401": _errors()["401"]}


#: The body of a create or a redefinition: a job definition.
_JOB_BODY = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VectorizeJob"}}}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "vectorize",
        "version": "1",
        "description": "Create jobs that keep embeddings of a PostgreSQL table in sync, and search them. "
        "Any other query parameter of GET /api/v1/search filters on a source column: col=value or col=op.value "
        "with op one of eq, gt, gte, lt, lte.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "VectorizeJob": {
                "type": "object",
                "required": list(REQUIRED),
                "additionalProperties": False,
                "properties": {field.name: json_schema(field) for field in FIELDS},
            },
            "SearchRequest": {
                "type": "object",
                "required": ["job_name", "query"],
                "additionalProperties": False,
                "properties": {
                    "job_name": _NAME,
                    "query": _NAME,
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    "filters": {
                        "type": "object",
                        "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
                    },
                    **{name: {"type": "number", "minimum": 0, "default": default} for name, default in RANKING_OPTIONS.items()},
                    "wait_for_sync": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_FOR_SYNC},
                    "return_columns": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                    "ef_search": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "window_size": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW},
                },
            },
            "SearchResult": {
                "type": "object",
                "description": "Every column of the source row, plus the scores and the row's best-matching chunk.",
                "required": ["similarity_score", "semantic_rank", "fts_rank", "rrf_score", "chunk"],
                "properties": {
                    "chunk": {
                        "type": "object",
                        "description": "the passage of the row's text that matched best, with its character offsets",
                        "properties": _typed(index="integer", start="integer", end="integer", text="string"),
                    },
                    **_typed(rrf_score="number"),
                    **_typed(nullable=True, semantic_rank="integer", fts_rank="integer", similarity_score="number"),
                },
            },
            "JobStatus": {
                "type": "object",
                "required": ["job_name", "id", "status", "embedded_rows", "pending", "failed_rows", "backfill_done"],
                "properties": {
                    **_stored(*DEFINITION, *SETTINGS),
                    **_typed(
                        pending="integer",
                        pending_live="integer",
                        pending_backfill="integer",
                        failed_rows="integer",
                        rate_per_second="number",
                        backfill_done="boolean",
                        created_at="string",
                    ),
                    **_typed(
                        nullable=True,
                        status_message="string",
                        waiting_reason="string",
                        waiting_until="string",
                        oldest_live_seconds="number",
                        oldest_backfill_seconds="number",
                        source_rows="integer",
                        source_rows_estimated="boolean",
                        embedded_rows="integer",
                        backfilled_at="string",
                        last_activity="string",
                    ),
                    "id": {"type": "string", "format": "uuid"},
                    "generation": {"type": "integer", "description": "the generation that serves search"},
                    "generations": {
                        "type": "array",
                        "description": "the serving generation, and the one a redefinition builds or keeps for rollback",
                        "items": {"$ref": "#/components/schemas/Generation"},
                    },
                    "status": {"type": "string", "enum": ["active", "failed"]},
                    "sync_state": {
                        "type": "string",
                        "enum": ["live", "backfilling", "waiting_for_embedder", "waiting_for_source", "failed"],
                    },
                    "last_errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": _typed(pk="string", attempts="integer", error="string", failed_at="string"),
                        },
                    },
                },
            },
            "Generation": {
                "type": "object",
                "required": ["generation", "state", "model"],
                "properties": {
                    **_stored("model", "src_columns", "update_time_col", "chunking", "chunk_tokens", "chunk_overlap", "language"),
                    **_typed(generation="integer"),
                    **_typed(
                        nullable=True,
                        embedded_rows="integer",
                        progress="number",
                        eta_seconds="number",
                        building_since="string",
                        serving_until="string",
                        kept_until="string",
                    ),
                    "state": {"type": "string", "enum": ["serving", "building", "previous"]},
                },
            },
            "Redefinition": {
                "type": "object",
                "required": ["job_name", "action", "message"],
                "properties": {
                    **_typed(
                        job_name="string", message="string", id="string", serving_generation="integer", generation="integer"
                    ),
                    "action": {"type": "string", "enum": ["building", "unchanged", "cancelled", "rolled_back"]},
                },
            },
            "DryRun": {
                "type": "object",
                "description": "What the request would do; nothing was created or changed",
                "required": ["dry_run", "action", "source_rows", "chunks", "tokens", "method"],
                "properties": {
                    **_typed(
                        dry_run="boolean",
                        job_name="string",
                        model="string",
                        source_rows="integer",
                        source_rows_estimated="boolean",
                        method="string",
                        chunks="integer",
                        tokens="integer",
                        embeds="string",
                        rate_source="string",
                    ),
                    **_typed(
                        nullable=True, estimated_seconds="number", rate_tokens_per_second="number", download_bytes="integer"
                    ),
                    "download": {"type": "string", "description": "a hub model not yet here: what the job would fetch first"},
                    "action": {"type": "string", "enum": ["create", "redefine", "unchanged"]},
                },
            },
            "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        },
    },
    "security": [{}, {"bearer": []}],
    "paths": {
        "/api/v1/table": {
            "post": {
                "summary": "Create a job (idempotent for an identical definition)",
                "parameters": [_DRY_RUN],
                "requestBody": _JOB_BODY,
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["id"],
                                    "properties": {"id": {"type": "string", "format": "uuid"}},
                                },
                                {"$ref": "#/components/schemas/DryRun"},
                            ]
                        },
                        "job created (or, with dry_run, what creating it would do)",
                    ),
                    **_errors(400, 403, 404, 409, 413),
                },
            },
            "get": {
                "summary": "List jobs with their progress",
                "responses": {
                    "200": _json({"type": "array", "items": {"$ref": "#/components/schemas/JobStatus"}}, "every job"),
                    **_errors(),
                },
            },
        },
        "/api/v1/table/{job_name}": {
            "parameters": [{"name": "job_name", "in": "path", "required": True, "schema": _NAME}],
            "get": {
                "summary": "One job: definition, progress, last errors",
                "responses": {"200": _json({"$ref": "#/components/schemas/JobStatus"}, "the job"), **_errors(404)},
            },
            "put": {
                "summary": "Redefine a job online: a new generation is built beside the serving one, then switched to",
                "parameters": [_DRY_RUN],
                "requestBody": _JOB_BODY,
                "responses": {
                    "200": _json(
                        {"oneOf": [{"$ref": "#/components/schemas/Redefinition"}, {"$ref": "#/components/schemas/DryRun"}]},
                        "nothing to build (the definition is the serving one), or with dry_run what it would do",
                    ),
                    "202": _json({"$ref": "#/components/schemas/Redefinition"}, "the new generation is being built"),
                    **_errors(400, 403, 404, 409, 413),
                },
            },
            "delete": {
                "summary": "Delete a job with its triggers, queue items and embeddings (every generation)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["job_name", "message"],
                            "properties": {"job_name": {"type": "string"}, "message": {"type": "string"}},
                        },
                        "deleted",
                    ),
                    **_errors(404),
                },
            },
        },
        "/api/v1/table/{job_name}/rollback": {
            "parameters": [{"name": "job_name", "in": "path", "required": True, "schema": _NAME}],
            "post": {
                "summary": "Cancel a redefinition being built, or switch back to the previous generation (instant)",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Redefinition"}, "done"),
                    **_errors(404, 409),
                },
            },
        },
        "/api/v1/search": {
            "get": {
                "summary": "Nearest rows to a query (hybrid vector + full-text ranking)",
                "parameters": _SEARCH_PARAMS,
                "responses": _search_responses(400, 403, 404),
            },
            "post": {
                "summary": "The same search with a JSON body and a filters object",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}},
                },
                "responses": _search_responses(400, 403, 404, 413),
            },
        },
        "/health": {
            "get": {
                "summary": "Overall health",
                "responses": _health_responses("healthy", "database unreachable"),
            }
        },
        "/health/live": {
            "get": {
                "summary": "The process answers",
                "security": [{}],
                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "alive")},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Database reachable and model loaded",
                "responses": _health_responses("ready", "not ready"),
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"), **_errors()},
            }
        },
    },
}
