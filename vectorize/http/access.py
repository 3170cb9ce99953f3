"""Who is calling the API, and with whose rights its requests run.

An API token maps to a PostgreSQL role (``VECTORIZE_API_TOKENS``, a JSON file): each request of
that token runs as that role (``SET LOCAL ROLE`` in its transaction), so row-level security and
table and column privileges decide what a search returns, exactly as for a psql session of that
role. A token may be limited to some jobs, and may or may not create, redefine and delete them.
The single ``VECTORIZE_API_TOKEN`` keeps meaning the daemon's own rights; so does no token at
all, which the API only allows on a loopback address unless told otherwise."""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vectorize.core.errors import Forbidden, NotFound


@dataclass(frozen=True)
class Principal:
    """The rights of one API caller. ``role`` None: the daemon's own; ``jobs`` None: every job."""

    role: str | None = None
    jobs: frozenset[str] | None = None
    manage: bool = True

    def may_see(self, job_name: str) -> bool:
        return self.jobs is None or job_name in self.jobs

    def require_job(self, job_name: str) -> None:
        """A job outside the token's list is answered like one that does not exist."""
        if not self.may_see(job_name):
            raise NotFound(f"job {job_name!r} does not exist")

    def require_manage(self, job_name: str) -> None:
        self.require_job(job_name)
        if not self.manage:
            raise Forbidden(f"this token may search but not create, redefine or delete jobs (job {job_name!r})")


#: The daemon's own rights: no token file, or the single VECTORIZE_API_TOKEN.
DAEMON = Principal()


def load_tokens(path: Path) -> dict[str, Principal]:
    """Read the token file: ``{"<token>": {"role": "<role>", "jobs": ["<job>", ...], "manage": false}}``.
    ``role`` is required; ``jobs`` (default: every job) and ``manage`` (default false) are optional."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"VECTORIZE_API_TOKENS={path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"VECTORIZE_API_TOKENS={path}: expected a JSON object of token: {{role, jobs, manage}}")
    tokens = {}
    for token, spec in raw.items():
        tokens[token] = _principal(path, token, spec)
    return tokens


def _principal(path: Path, token: str, spec: Any) -> Principal:
    where = f"VECTORIZE_API_TOKENS={path}, token {token[:4]}…"
    if len(token) < 16 or not token.isascii() or not token.isprintable():
        raise ValueError(f"{where}: a token must be at least 16 printable ASCII characters")
    if not isinstance(spec, dict) or set(spec) - {"role", "jobs", "manage"}:
        raise ValueError(f"{where}: expected an object with role, and optionally jobs and manage")
    role, jobs, manage = spec.get("role"), spec.get("jobs"), spec.get("manage", False)
    if not isinstance(role, str) or not role:
        raise ValueError(f"{where}: role must name a PostgreSQL role")
    if jobs is not None and (not isinstance(jobs, list) or not all(isinstance(j, str) for j in jobs)):
        raise ValueError(f"{where}: jobs must be an array of job names")
    if not isinstance(manage, bool):
        raise ValueError(f"{where}: manage must be true or false")
    return Principal(role=role, jobs=None if jobs is None else frozenset(jobs), manage=manage)


@dataclass(frozen=True)
class Tokens:
    """Every token the API accepts. Empty: the API is open (with the daemon's rights)."""

    single: str | None = None
    mapped: dict[str, Principal] | None = None

    @property
    def required(self) -> bool:
        return self.single is not None or bool(self.mapped)

    def principal(self, authorization: str) -> Principal | None:
        """The caller of an ``Authorization`` header, or None when it names no token we know.
        Every token is compared in constant time, so timing tells nothing about near misses."""
        if not self.required:
            return DAEMON
        supplied = authorization.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        if self.single is not None and hmac.compare_digest(supplied, f"Bearer {self.single}".encode()):
            found = DAEMON
        for token, principal in (self.mapped or {}).items():
            if hmac.compare_digest(supplied, f"Bearer {token}".encode()):
                found = principal
        return found


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tokens: Tokens, allow_unauthenticated: bool) -> None:
    """Refuse to serve a non-loopback address with no token: anyone who could reach it would
    have the daemon's rights over every job and table it can read."""
    if not tokens.required and not is_loopback(host) and not allow_unauthenticated:
        raise ValueError(
            f"VECTORIZE_HOST={host} would expose the API with no token: set VECTORIZE_API_TOKEN (the daemon's rights) or "
            "VECTORIZE_API_TOKENS (a token per PostgreSQL role), or VECTORIZE_ALLOW_UNAUTHENTICATED=true to serve it open"
        )
