"""One settings object: flags override environment, environment overrides defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import platformdirs

from .paths import MODELS_DIR


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("vectorize"))


@dataclass(frozen=True)
class Settings:
    #: PostgreSQL URL; None means "start the embedded server under data_dir".
    database_url: str | None = None
    data_dir: Path = field(default_factory=_default_data_dir)
    models_dir: Path = MODELS_DIR
    host: str = "127.0.0.1"
    port: int = 8080
    #: When set, every endpoint but /health/live needs "Authorization: Bearer <token>".
    api_token: str | None = None
    #: Rows claimed per worker transaction. Large enough that length-sorting inside the
    #: batch keeps padding low (64 reached 67% of the engine's speed in a backfill, 256: 92%),
    #: small enough that a batch finishes well within the 10 s shutdown budget.
    batch_size: int = 256
    #: Rows per transaction while a job's backfill scan runs: sorting 512 texts by length
    #: instead of 256 wastes less padding (backfill 0.88 -> 0.95 of the engine's rate). Kept
    #: apart from batch_size because live changes queued during a backfill wait behind it.
    backfill_batch_size: int = 512
    #: Seconds between fallback polls when no notification arrives.
    poll_interval: float = 5.0
    #: Inference threads (default: every core).
    threads: int | None = None
    log_level: str = "INFO"
    #: Tries before a failing row is parked in vectorize.failure.
    max_attempts: int = 5
    #: Seconds before the first retry of a failed row; doubles with each try (capped at 5 min).
    retry_backoff: float = 1.0
    max_body_bytes: int = 1 << 20
    #: Comma-separated models served by an OpenAI-compatible API, usable as "openai/<model>".
    openai_models: str = ""
    #: Base URL of that API (OpenAI, Ollama, vLLM, text-embeddings-inference, ...).
    openai_base_url: str = "https://api.openai.com/v1"
    #: Read from OPENAI_API_KEY.
    openai_api_key: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``DATABASE_URL`` and ``VECTORIZE_*``; keyword overrides (from flags) win."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        if env.get("DATABASE_URL"):
            values["database_url"] = env["DATABASE_URL"]
        if env.get("OPENAI_API_KEY"):
            values["openai_api_key"] = env["OPENAI_API_KEY"]
        for f in fields(cls):
            raw = env.get(f"VECTORIZE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _parse(name: str, raw: str) -> object:
    kinds: dict[str, type] = {
        "data_dir": Path,
        "models_dir": Path,
        "port": int,
        "batch_size": int,
        "backfill_batch_size": int,
        "max_attempts": int,
        "retry_backoff": float,
        "poll_interval": float,
        "threads": int,
        "max_body_bytes": int,
    }
    kind = kinds.get(name, str)
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"VECTORIZE_{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
