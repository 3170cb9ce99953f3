"""Property-based hostile input against the live API: any JSON, any strings, any query.

The only outcomes allowed are a 2xx, or a 4xx with a JSON error; never a 5xx, never a
half-created job."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import MY_JOB

NASTY = st.sampled_from(
    [
        "",
        " ",
        "'",
        '"',
        "\\",
        "'; DROP TABLE my_products; --",
        "\x00",
        "a\x00b",
        "é",
        "🚲",
        "ﷺ",
        "x" * 5000,
        "public",
        "my_products",
        "product_id",
        "updated_at",
        "my_job",
        "Robert'); DROP TABLE jobs;--",
    ]
)
TEXT = st.one_of(NASTY, st.text(max_size=60))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
JOB_BODY = st.fixed_dictionaries({}, optional={k: st.one_of(JSON, TEXT, st.lists(TEXT, max_size=4)) for k in MY_JOB})


def request(base: str, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    req = urllib.request.Request(base + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def objects(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute(
            """select (select count(*) from vectorize.job),
                      (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'vectorize'),
                      (select count(*) from pg_trigger where not tgisinternal),
                      (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'vectorize')"""
        ).fetchone()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(JOB_BODY, JSON, TEXT.map(lambda t: t)))
def test_create_job_survives_any_body(live_api: str, live_db_url: str, body) -> None:
    before = objects(live_db_url)
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else json.dumps(body).encode()
    status, answer = request(live_api, "POST", "/api/v1/table", raw)
    assert status < 500, answer
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str)
    assert objects(live_db_url) == before


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    params=st.dictionaries(
        st.one_of(st.sampled_from(["job_name", "query", "limit", "price", "product_category", "rrf_k"]), TEXT),
        st.one_of(TEXT, st.integers().map(str), st.sampled_from(["gte.1", "lt.x", "eq.", "zz.1", "my_job"])),
        max_size=5,
    )
)
def test_search_survives_any_query_string(live_api: str, params) -> None:
    query = urllib.parse.urlencode({"job_name": "my_job", "query": "camping", **params})
    status, answer = request(live_api, "GET", "/api/v1/search?" + query)
    assert status < 500, answer
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str)
    else:
        assert isinstance(answer, list)


PASTED = [
    "| | ------ | Readonly properties defined here: | | mean | Arithmetic mean.",
    "!!! & | <-> :* ( ) ' \"",
    '"unbalanced quote',
    "the of and a to",  # only stop words
    "def f(x):\n    return x | y & !z  # code\x07\x1b",
    "lorem ipsum | " * 2000,  # ~28 kB pasted
]


@pytest.mark.parametrize("text", PASTED)
def test_any_pasted_text_is_a_valid_query(live_api: str, live_db_url: str, text: str) -> None:
    status, answer = request(live_api, "GET", "/api/v1/search?" + urllib.parse.urlencode({"job_name": "my_job", "query": text}))
    assert status == 200 and len(answer) == 10, answer
    body = json.dumps({"job_name": "my_job", "query": text}).encode()
    status, answer = request(live_api, "POST", "/api/v1/search", body)
    assert status == 200 and len(answer) == 10, answer


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300))
def test_any_unicode_query_answers_through_get_and_post(live_api: str, text: str) -> None:
    """Arbitrary unicode through both HTTP forms: 200 with results (the semantic half always has some)."""
    status, answer = request(live_api, "GET", "/api/v1/search?" + urllib.parse.urlencode({"job_name": "my_job", "query": text}))
    assert status == 200 and len(answer) == 10, answer
    body = json.dumps({"job_name": "my_job", "query": text, "limit": 3}).encode()
    status, answer = request(live_api, "POST", "/api/v1/search", body)
    assert status == 200 and len(answer) == 3, answer


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300))
def test_the_full_text_half_accepts_any_text(live_db_url: str, text: str) -> None:
    """vectorize.search() from SQL, with any unicode query text: results, never an error."""
    with psycopg.connect(live_db_url) as conn:
        rows = conn.execute(
            "select * from vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1), 5, '{}', %s)",
            (text,),
        ).fetchall()
    assert len(rows) == 5
