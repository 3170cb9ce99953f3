"""CLI job commands, search, demo and the systemd notify protocol, as subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from vectorize.paths import SQL_DIR

from .helpers import create_job

INT8 = "sentence-transformers/all-MiniLM-L6-v2-int8"

ROOT = Path(__file__).parent.parent


def vectorize(db_url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "vectorize", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_demo_then_jobs_commands_and_search(db_url: str) -> None:
    demo = vectorize(db_url, "demo")
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert "40 rows embedded" in demo.stdout and "Backpack" in demo.stdout and "Pencil" in demo.stdout

    listed = vectorize(db_url, "jobs", "list")
    assert listed.returncode == 0 and "my_job" in listed.stdout and "done" in listed.stdout
    shown = vectorize(db_url, "jobs", "show", "my_job")
    assert shown.returncode == 0 and "embedded_rows" in shown.stdout and "40" in shown.stdout
    found = vectorize(db_url, "search", "my_job", "camping gear", "--limit", "2")
    assert found.returncode == 0 and "Backpack" in found.stdout
    waited = vectorize(db_url, "jobs", "wait", "my_job", "--timeout", "30")
    assert waited.returncode == 0 and "40 rows embedded" in waited.stdout

    def create(update_time_col: str) -> subprocess.CompletedProcess[str]:
        return vectorize(
            db_url,
            "jobs",
            "create",
            "names",
            "--table",
            "my_products",
            "--columns",
            "product_name",
            "--primary-key",
            "product_id",
            "--update-time-col",
            update_time_col,
        )

    bad = create("price")
    assert bad.returncode == 1 and "numeric" in bad.stderr
    created = create("updated_at")
    assert created.returncode == 0 and "names created" in created.stdout
    assert vectorize(db_url, "jobs", "delete", "names").returncode == 0
    again = vectorize(db_url, "jobs", "delete", "names")
    assert again.returncode == 1 and "does not exist" in again.stderr


def test_jobs_alter_dry_run_show_and_rollback(db_url: str) -> None:
    """The CLI face of a redefinition: a dry run changes nothing; alter starts generation 2 (shown
    by jobs show as building, the rest of the definition kept); rollback cancels it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
        create_job(conn)
    planned = vectorize(db_url, "jobs", "alter", "my_job", "--model", INT8, "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "40 source rows" in planned.stdout and "exact" in planned.stdout and "tokens/s" in planned.stdout
    bad = vectorize(db_url, "jobs", "alter", "my_job", "--columns", "nope")
    assert bad.returncode == 1 and '"nope" does not exist' in bad.stderr
    altered = vectorize(db_url, "jobs", "alter", "my_job", "--model", INT8, "--chunk-tokens", "128")
    assert altered.returncode == 0 and "generation 2 is being built" in altered.stdout, altered.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select model, src_columns, chunk_tokens from vectorize.generation").fetchone()
    assert row == (INT8, ["product_name", "description"], 128)
    shown = vectorize(db_url, "jobs", "show", "my_job")
    assert shown.returncode == 0 and "building" in shown.stdout and "serving" in shown.stdout
    rolled = vectorize(db_url, "jobs", "rollback", "my_job")
    assert rolled.returncode == 0 and "cancelled" in rolled.stdout
    nothing = vectorize(db_url, "jobs", "rollback", "my_job")
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr


def test_jobs_wait_fails_when_the_job_fails(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
        conn.execute(
            "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
            " values ('j', 'my_products', 'public', '{product_name}', 'product_id', 'updated_at', 'sentence-transformers/all-MiniLM-L6-v2')"
        )
        conn.execute("update vectorize.job set status = 'failed', status_message = 'source table was dropped'")
    result = vectorize(db_url, "jobs", "wait", "j", "--timeout", "30")
    assert result.returncode == 1 and "source table was dropped" in result.stdout


def test_sd_notify_ready_watchdog_and_stopping(db_url: str) -> None:
    """The worker speaks systemd's notify protocol over a real datagram socket."""
    folder = Path(tempfile.mkdtemp(prefix="vectorize-notify-"))
    address = str(folder / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(120)
    env = {**os.environ, "DATABASE_URL": db_url, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        messages = [sock.recv(256).decode()]
        assert messages == ["READY=1"]
        messages += [sock.recv(256).decode(), sock.recv(256).decode()]
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        proc.send_signal(signal.SIGTERM)
        while (message := sock.recv(256).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_systemd_units_are_notify_type_and_hardened() -> None:
    for unit in ("vectorize-worker.service", "vectorize-api.service"):
        text = (ROOT / "deploy" / unit).read_text()
        for line in (
            "Type=notify",
            "Restart=on-failure",
            "EnvironmentFile=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "WatchdogSec=",
        ):
            assert line in text, f"{unit} lacks {line}"


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever this machine has."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="neither `docker compose` nor `docker-compose` is installed here")
def test_compose_file_validates() -> None:
    """Valid, and it will not start an API without a token; the daemon is not the superuser."""
    command = _compose_command()
    assert command is not None
    env = {k: v for k, v in os.environ.items() if k != "VECTORIZE_API_TOKEN"}
    config = [*command, "-f", str(ROOT / "compose.yaml"), "config"]
    refused = subprocess.run([*config, "-q"], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "VECTORIZE_API_TOKEN" in refused.stderr
    result = subprocess.run(config, capture_output=True, text=True, env={**env, "VECTORIZE_API_TOKEN": "x" * 32})
    assert result.returncode == 0, result.stderr
    assert "vectorize_daemon:" in result.stdout and "postgresql://vectorize:" not in result.stdout
