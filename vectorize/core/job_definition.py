"""A job's definition: every field, its JSON type, default, bounds, and whether a row's text depends
on it -- written here once.

The HTTP parser (``parse``), the OpenAPI schema (http/openapi.py), the CLI's flags (cli/main.py)
and the dry run's "what changes" (service/dry_run.py) are derived from ``FIELDS``; the database
checks the same rules again in vectorize._check_definition (so SQL users get the same answers),
and a test holds the two against each other (tests/test_job_definition.py). Bounds that depend on
the model (``chunk_tokens`` up to its window, ``chunk_overlap`` up to half of ``chunk_tokens``) are
the database's alone: it knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vectorize.core.errors import Invalid, reject_nul


@dataclass(frozen=True)
class Field:
    name: str
    #: The JSON type: str, list (of strings), bool or int.
    kind: type
    description: str
    required: bool = False
    default: object = None
    #: null is a value of its own (the model's window, the installation's default, every column).
    nullable: bool = False
    minimum: int | None = None
    maximum: int | None = None
    #: The rows' text and chunks depend on it: a redefinition changing it embeds again.
    text: bool = False
    #: A search setting, not part of the definition: changing it embeds nothing, and a request
    #: that leaves it out keeps the job's value.
    setting: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FIELDS: tuple[Field, ...] = (
    Field("job_name", str, "the job's name: letters, digits and underscores", required=True),
    Field("src_table", str, "source table", required=True),
    Field("src_schema", str, "its schema", required=True),
    Field("src_columns", list, "columns whose text is embedded, in order", required=True, text=True),
    Field("primary_key", str, "primary-key (or unique, not-null) column", required=True),
    Field("update_time_col", str, "timestamptz column with each row's last update", required=True),
    Field("model", str, "the model string, as pg_vectorize names models", required=True),
    Field(
        "chunking",
        bool,
        "split rows longer than chunk_tokens into overlapping chunks (false: truncate them)",
        default=True,
        text=True,
    ),
    Field(
        "chunk_tokens",
        int,
        "tokens per chunk as the model's tokenizer counts them; default: the model's window",
        nullable=True,
        minimum=16,
        text=True,
    ),
    Field(
        "chunk_overlap",
        int,
        "tokens shared by neighbouring chunks (at most half of chunk_tokens)",
        default=32,
        minimum=0,
        text=True,
    ),
    Field(
        "language",
        str,
        "text search configuration of the full-text half (simple for mixed languages); a change embeds nothing",
        default="english",
    ),
    Field(
        "return_columns",
        list,
        "the only source columns search may return for this job (default: all)",
        nullable=True,
        setting=True,
    ),
    Field(
        "ef_search", int, "the job's default HNSW ef_search (default 100)", nullable=True, minimum=1, maximum=1000, setting=True
    ),
    Field(
        "hnsw_m",
        int,
        "HNSW links per node (default: pgvector's 16); a change rebuilds the index beside the old",
        nullable=True,
        minimum=2,
        maximum=100,
        setting=True,
    ),
    Field(
        "hnsw_ef_construction",
        int,
        "HNSW build candidate list, at least 2 x hnsw_m (default: pgvector's 64)",
        nullable=True,
        minimum=4,
        maximum=1000,
        setting=True,
    ),
)
BY_NAME = {f.name: f for f in FIELDS}
#: The seven fields of pg_vectorize's VectorizeJob.
REQUIRED = tuple(f.name for f in FIELDS if f.required)
#: Optional fields of the definition itself (not settings).
OPTIONAL = tuple(f.name for f in FIELDS if not f.required and not f.setting)
SETTINGS = tuple(f.name for f in FIELDS if f.setting)
#: The fields that make up a definition, as the job row stores them.
DEFINITION = (*REQUIRED, *OPTIONAL)
#: The fields a row's text and chunks depend on; vectorize._same_text compares the same ones.
TEXT_FIELDS = tuple(f.name for f in FIELDS if f.text)

_TYPE_NAMES = {str: "a string", list: "an array of strings", bool: "true or false", int: "an integer"}


def _has_type(value: Any, kind: type) -> bool:
    """isinstance, without narrowing ``value`` for the type checker (the kinds vary per field)."""
    return isinstance(value, kind)


def _type_name(value: object) -> str:
    return type(value).__name__ if value is not None else "null"


def parse(body: Any) -> dict[str, Any]:
    """Validate the JSON shape of a VectorizeJob; the rules about the table, columns, model and
    bounds are the database's (its messages name the fix). Search settings a body leaves out are
    left out: they keep the job's values."""
    if not isinstance(body, dict):
        raise Invalid(f"the request body must be a JSON object with the fields {', '.join(REQUIRED)}")
    unknown = sorted(set(body) - set(BY_NAME))
    if unknown:
        raise Invalid(
            f"unknown field {unknown[0]!r}; a job has the fields {', '.join(REQUIRED)} "
            f"and optionally {', '.join([*OPTIONAL, *SETTINGS])}",
        )
    missing = [f for f in REQUIRED if f not in body]
    if missing:
        raise Invalid(f"{missing[0]} is required")
    definition: dict[str, Any] = {}
    for field in FIELDS:
        if field.name not in body and (field.setting or field.required):
            continue  # a setting left out keeps the job's value
        value = body.get(field.name, field.default)
        definition[field.name] = _checked(field, value)
    return definition


def _checked(field: Field, value: Any) -> Any:
    name, kind = field.name, field.kind
    if field.required:
        if not _has_type(value, kind):
            raise Invalid(f"{name} must be {_TYPE_NAMES[kind]}, got {_type_name(value)}")
        if kind is list and not all(isinstance(v, str) for v in value):
            raise Invalid(f"{name} must be an array of strings")
    elif kind is list and value is not None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid(f"{name} must be an array of strings or null, got {_type_name(value)}")
    elif not (value is None and field.nullable) and (not _has_type(value, kind) or (kind is int and isinstance(value, bool))):
        raise Invalid(f"{name} must be {_TYPE_NAMES[kind]}{' or null' if field.nullable else ''}, got {_type_name(value)}")
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            reject_nul(name, text)
    if kind is int and value is not None and not -(2**31) <= value < 2**31:
        raise Invalid(f"{name} {value} is out of range")
    return value


def with_defaults(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition with every optional default filled in, and for each search setting whether
    the request sets it (``set_<field>``): one it leaves out keeps the job's value."""
    params = {**{name: BY_NAME[name].default for name in OPTIONAL}, **definition}
    for name in SETTINGS:
        params[f"set_{name}"] = name in definition
        params.setdefault(name, BY_NAME[name].default)
    return params


def same_definition(row: dict[str, Any], definition: dict[str, Any]) -> bool:
    return all(row[f] == definition[f] for f in DEFINITION if f != "job_name")


def json_schema(field: Field) -> dict[str, Any]:
    """The field's OpenAPI (3.0) schema."""
    if field.kind is list:
        schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
        if field.required:
            schema["minItems"] = 1
    else:
        schema = {"type": {str: "string", bool: "boolean", int: "integer"}[field.kind]}
    if field.nullable:
        schema["nullable"] = True
    if field.default is not None:
        schema["default"] = field.default
    if field.minimum is not None:
        schema["minimum"] = field.minimum
    if field.maximum is not None:
        schema["maximum"] = field.maximum
    if not field.required:
        schema["description"] = field.description
    return schema
