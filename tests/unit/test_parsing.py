"""Request parsing at the HTTP boundary: limits, ranking options, wait_for_sync, job bodies."""

from __future__ import annotations

import pytest

from vectorize.core.errors import VectorizeError
from vectorize.core.job_definition import parse as parse_job_definition
from vectorize.service.search import parse_ef_search, parse_limit, parse_ranking, parse_return_columns, parse_wait_for_sync


def test_limit() -> None:
    assert parse_limit(None) == 10 and parse_limit("25") == 25
    for bad in ("0", "1001", "x", True, 2.5j, 2.5, "2.5"):
        with pytest.raises(VectorizeError, match="limit must be an integer from 1 to 1000"):
            parse_limit(bad)


def test_ranking_options_default_and_validate() -> None:
    params = {"semantic_wt": "2", "other": "kept"}
    assert parse_ranking(params) == {"semantic_wt": 2.0, "fts_wt": 1.0, "rrf_k": 60.0}
    assert params == {"other": "kept"}  # the rest are filters
    with pytest.raises(VectorizeError, match="fts_wt must be a non-negative number"):
        parse_ranking({"fts_wt": "-1"})


def test_wait_for_sync() -> None:
    assert parse_wait_for_sync(None) is None and parse_wait_for_sync("2.5") == 2.5 and parse_wait_for_sync(0) == 0
    for bad in ("-1", "61", "soon", True):
        with pytest.raises(VectorizeError, match="wait_for_sync must be a number of seconds from 0 to 60"):
            parse_wait_for_sync(bad)


def test_job_definition_shape() -> None:
    body = {
        "job_name": "j",
        "src_table": "t",
        "src_schema": "public",
        "src_columns": ["a"],
        "primary_key": "id",
        "update_time_col": "u",
        "model": "m",
    }
    # Search settings left out are left out (the job keeps its own); said as null, they are cleared.
    assert parse_job_definition(body) == {
        **body,
        "chunking": True,
        "chunk_tokens": None,
        "chunk_overlap": 32,
        "language": "english",
    }
    assert parse_job_definition({**body, "return_columns": None})["return_columns"] is None
    with pytest.raises(VectorizeError, match="language contains a NUL"):
        parse_job_definition({**body, "language": "ger\x00man"})
    with pytest.raises(VectorizeError, match="hnsw_m must be an integer or null, got str"):
        parse_job_definition({**body, "hnsw_m": "16"})
    assert parse_job_definition({**body, "return_columns": ["a", "id"]})["return_columns"] == ["a", "id"]
    with pytest.raises(VectorizeError, match="return_columns must be an array of strings or null, got str"):
        parse_job_definition({**body, "return_columns": "a"})
    assert parse_job_definition({**body, "chunk_tokens": 128})["chunk_tokens"] == 128
    with pytest.raises(VectorizeError, match="unknown field 'extra'"):
        parse_job_definition({**body, "extra": 1})
    with pytest.raises(VectorizeError, match="src_columns must be an array of strings"):
        parse_job_definition({**body, "src_columns": [1]})
    with pytest.raises(VectorizeError, match="chunk_overlap must be an integer, got bool"):
        parse_job_definition({**body, "chunk_overlap": True})
    with pytest.raises(VectorizeError, match="NUL"):
        parse_job_definition({**body, "job_name": "a\x00b"})


def test_return_columns_and_ef_search() -> None:
    assert parse_return_columns(None) is None and parse_return_columns("") is None
    assert parse_return_columns("a, b") == ["a", "b"]
    assert parse_return_columns(["a"]) == ["a"]
    for bad in (",", [], [1], ["a", ""], 5):
        with pytest.raises(VectorizeError, match="return_columns must name columns"):
            parse_return_columns(bad)
    assert parse_ef_search("100") == 100 and parse_ef_search(1000) == 1000 and parse_ef_search(None) is None
    for bad in ("0", "1001", "x", 1.5, True):
        with pytest.raises(VectorizeError, match="ef_search must be an integer from 1 to 1000"):
            parse_ef_search(bad)
