"""The CLI as a user runs it: a subprocess, real signals, real HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from vectorize.paths import SQL_DIR

from .helpers import MY_JOB, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vectorize", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> list[str]:
    """Collect output lines until one contains ``marker``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process exited ({proc.poll()}) before printing {marker!r}:\n{''.join(lines)}")
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} within {timeout}s:\n{''.join(lines)}")


def http(method: str, url: str, body: object | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stop(proc: subprocess.Popen[str]) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=15)
    return code, time.monotonic() - started


def test_up_against_database_url_serves_api_and_worker(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "VECTORIZE_POLL_INTERVAL": "60"}
    proc = start(["up", "--port", str(port)], env)
    try:
        read_until(proc, f"api: http://127.0.0.1:{port}")
        status, body = http("POST", f"http://127.0.0.1:{port}/api/v1/table", MY_JOB)
        assert status == 200 and "id" in body
        with psycopg.connect(db_url, autocommit=True) as conn:
            count = "select count(*) from vectorize._embeddings_my_job"
            wait_for(lambda: conn.execute(count).fetchone()[0] == 40)
            conn.execute("update my_products set description = 'Gear for camping trips' where product_id = 1")
            wait_for(lambda: conn.execute("select count(*) from vectorize.queue").fetchone()[0] == 0, timeout=5)
        status, results = http("GET", f"http://127.0.0.1:{port}/api/v1/search?job_name=my_job&query=camping%20gear&limit=2")
        assert status == 200 and len(results) == 2
        assert results[0]["product_id"] == 1  # the updated row now matches best
    finally:
        code, seconds = stop(proc)
    assert code == 0 and seconds < 10


def test_up_without_database_url_starts_embedded_postgres_and_reuses_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    data_dir = Path(tempfile.mkdtemp(prefix="vectorize-test-up-"))
    env["VECTORIZE_DATA_DIR"] = str(data_dir / "data")
    port = free_port()
    urls = []
    for round_ in range(2):
        proc = start(["up", "--port", str(port)], env)
        try:
            lines = read_until(proc, "api: http://")
            url = next(line.split()[1] for line in lines if line.startswith("database: postgresql://"))
            urls.append(url)
            with psycopg.connect(url, autocommit=True) as conn:
                if round_ == 0:
                    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
                    conn.execute("insert into notes values (1, 'hello', now())")
                    status, _ = http(
                        "POST",
                        f"http://127.0.0.1:{port}/api/v1/table",
                        {**MY_JOB, "job_name": "notes", "src_table": "notes", "src_columns": ["body"], "primary_key": "id"},
                    )
                    assert status == 200
                wait_for(lambda: conn.execute("select count(*) from vectorize._embeddings_notes").fetchone()[0] == 1)
        finally:
            code, _ = stop(proc)
        assert code == 0
    assert urls[0] == urls[1]
    shutil.rmtree(data_dir, ignore_errors=True)


def test_help_documents_flags_and_environment() -> None:
    out = subprocess.run([sys.executable, "-m", "vectorize", "up", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--host", "--port", "DATABASE_URL", "VECTORIZE_DATA_DIR"):
        assert word in out


@pytest.mark.parametrize("command", ["migrate"])
def test_migrate_is_idempotent(db_url: str, command: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "vectorize", command], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    with psycopg.connect(db_url) as conn:
        names = [
            r[0] for r in conn.execute("select name from vectorize.migration where name not like 'functions:%' order by name")
        ]
        digests = conn.execute("select count(*) from vectorize.migration where name like 'functions:%'").fetchone()[0]
    assert names == sorted(p.name for p in (Path(__file__).parent.parent / "vectorize" / "sql" / "migrations").glob("[0-9]*.sql"))
    assert digests == 1  # the function files last applied
