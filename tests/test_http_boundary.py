"""The HTTP boundary: cross-site requests, foreign Host names, bad bytes and numbers get 4xx answers
with a JSON error, never a 5xx, and change nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectorize.http.access import Tokens, check_exposure

from .helpers import MY_JOB, api_client

TOKEN = "t" * 32


@pytest.fixture
async def guarded_api(settings, catalog):
    """The API with a token, as a deployment beyond localhost has it."""
    async with api_client(dataclasses.replace(settings, api_token=TOKEN), catalog) as client:
        yield client


async def raw_request(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library would send most of these), return status and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


def _json_error(body: bytes) -> str:
    answer = json.loads(body)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str)
    return answer["error"]


async def test_json_bodies_must_say_they_are_json(api, conn, products) -> None:
    """A page on another site can POST text/plain to localhost without asking first; JSON it cannot."""
    body = json.dumps(MY_JOB)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        response = await api.post("/api/v1/table", data=body, headers={"Content-Type": kind})
        assert response.status == 415, kind
        assert "application/json" in (await response.json())["error"]
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 0
    assert (await api.post("/api/v1/table", data=body, headers={"Content-Type": "application/json; charset=utf-8"})).status == 200


async def test_a_foreign_host_name_is_refused(api) -> None:
    """DNS rebinding: a page served from evil.example, its name re-pointed at 127.0.0.1."""
    response = await api.get("/api/v1/table", headers={"Host": "evil.example"})
    assert response.status == 421 and "VECTORIZE_ALLOWED_HOSTS" in (await response.json())["error"]
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        assert (await api.get("/api/v1/table", headers={"Host": host})).status == 200, host


@pytest.mark.parametrize(
    "body",
    [
        b'{"job_name": "my_job", "query": "x", "limit": 1e999}',
        b'{"job_name": "my_job", "query": "x", "limit": NaN}',
        b'{"job_name": "my_job", "query": "x", "limit": -Infinity}',
        b'{"limit": ' + b"9" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe",
    ],
)
async def test_bad_numbers_and_nesting_are_400s(api, body: bytes) -> None:
    response = await api.post("/api/v1/search", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert "not valid JSON" in (await response.json())["error"]


async def test_a_nul_in_the_path_is_a_400(api) -> None:
    status, body = await raw_request(api, b"GET /api/v1/table/my%00job HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert status == 400 and "NUL" in _json_error(body)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_any_authorization_bytes_are_a_401(guarded_api, value: bytes) -> None:
    async def go() -> tuple[int, bytes]:
        return await raw_request(
            guarded_api, b"GET /api/v1/table HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value + b"\r\n"
        )

    status, body = asyncio.get_event_loop().run_until_complete(go())
    assert status in (400, 401), body
    if status == 401:
        _json_error(body)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=st.binary(max_size=120).filter(lambda b: not any(c in b for c in b" \r\n#")))
def test_any_query_string_bytes_are_answered_below_500(guarded_api, query: bytes) -> None:
    async def go() -> tuple[int, bytes]:
        head = (
            b"GET /api/v1/search?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        )
        return await raw_request(guarded_api, head)

    status, _ = asyncio.get_event_loop().run_until_complete(go())
    assert status < 500


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=400))
def test_any_body_bytes_are_answered_below_500(guarded_api, body: bytes) -> None:
    async def go() -> tuple[int, bytes]:
        head = (
            b"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        )
        return await raw_request(guarded_api, head, body)

    status, answer = asyncio.get_event_loop().run_until_complete(go())
    assert status < 500, answer


def test_an_open_api_never_binds_beyond_loopback_unless_told() -> None:
    with pytest.raises(ValueError, match="VECTORIZE_API_TOKEN"):
        check_exposure("0.0.0.0", Tokens(), allow_unauthenticated=False)
    check_exposure("127.0.0.1", Tokens(), allow_unauthenticated=False)
    check_exposure("::1", Tokens(), allow_unauthenticated=False)
    check_exposure("0.0.0.0", Tokens(single=TOKEN), allow_unauthenticated=False)
    check_exposure("0.0.0.0", Tokens(), allow_unauthenticated=True)


@pytest.mark.parametrize("param", ["limit", "rrf_k", "fts_wt", "ef_search", "window_size", "wait_for_sync"])
@pytest.mark.parametrize("value", ["1e999", "NaN", "Infinity", "-Infinity", "1" * 400])
async def test_bad_numbers_in_query_strings_are_400s(api, param: str, value: str) -> None:
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x", param: value})
    assert response.status == 400 and param in (await response.json())["error"]


def test_the_service_refuses_an_open_non_loopback_api(settings, capsys) -> None:
    from vectorize.cli.serve import run

    open_api = dataclasses.replace(settings, host="0.0.0.0", api_token=None, api_tokens=None)
    assert run(open_api, api=True, worker=False) == 1
    assert "VECTORIZE_ALLOW_UNAUTHENTICATED" in capsys.readouterr().err
