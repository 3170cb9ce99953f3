"""One settings object: flags override environment, environment overrides defaults.

Each setting's help text lives beside it (``doc``), and ``vectorize --help`` prints
the environment variables from here, so the two cannot drift apart."""

from __future__ import annotations

import os
import warnings
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vectorize.embedding.remote import DEFAULT_BASE_URL
from vectorize.paths import MODELS_DIR


def _default_data_dir() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (common on servers and in
        # containers); the data directory does not depend on it, so say nothing.
        warnings.simplefilter("ignore")
        import platformdirs

        return Path(platformdirs.user_data_dir("vectorize"))


def _setting(default: object, doc: str, *, env: str | None = None, factory: Any = None) -> Any:
    metadata = {"doc": doc, "env": env}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = _setting(
        None, "PostgreSQL (14+, with pgvector) to use; unset = embedded PostgreSQL 18", env="DATABASE_URL"
    )
    data_dir: Path = _setting(
        None, "where the embedded PostgreSQL keeps its data (default: the user data dir)", factory=_default_data_dir
    )
    models_dir: Path = _setting(MODELS_DIR, "model manifests and exported ONNX files (default: models/)")
    state_dir: Path | None = _setting(
        None,
        "where engine settings measured on this machine are kept (default: systemd's $STATE_DIRECTORY, else the models dir)",
    )
    tune: str = _setting(
        "auto", "auto: time the engine's candidate settings at first start on a CPU and keep the fastest; off: skip that"
    )
    host: str = _setting("127.0.0.1", "API bind address")
    port: int = _setting(8080, "API port")
    api_token: str | None = _setting(
        None, "require 'Authorization: Bearer <token>' on the API (all but /health/live); requests run with the daemon's rights"
    )
    api_tokens: Path | None = _setting(
        None, 'JSON file of tokens, each run as a PostgreSQL role: {"<token>": {"role": "app", "jobs": [...], "manage": false}}'
    )
    allowed_hosts: str = _setting(
        "", "comma-separated Host header names the API answers besides its bind address and localhost (DNS rebinding)"
    )
    allow_unauthenticated: bool = _setting(
        False, "serve a non-loopback VECTORIZE_HOST with no token (anyone who reaches it has the daemon's rights)"
    )
    # Live changes are claimed in small batches: a change of another job waits behind at
    # most one of them. Inference itself is shared by priority (embedding/encoder.py).
    batch_size: int = _setting(64, "rows (chunks, for long rows) per live-change batch")
    # Sorting 512 texts by length instead of 256 wastes less padding (backfill 0.88 -> 0.95
    # of the engine's rate). Live changes never wait behind these: they are a lane of their own.
    backfill_batch_size: int = _setting(512, "rows (chunks, for long rows) per backfill batch")
    poll_interval: float = _setting(5.0, "seconds between fallback polls when no notification arrives")
    reconcile_interval: float = _setting(
        3600.0,
        "seconds between reconciliation passes over every job, which find changes no trigger saw"
        " (a restore, replication without ENABLE ALWAYS TRIGGER), deletes included; 0: only at start-up",
    )
    generation_keep_seconds: float = _setting(
        3600.0, "after a redefinition switches, how long the previous generation is kept (fresh) for an instant rollback"
    )
    threads: int | None = _setting(None, "inference threads (default: all cores)")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING")
    max_attempts: int = _setting(5, "tries before a failing row is parked in vectorize.failure")
    retry_backoff: float = _setting(1.0, "seconds before a failed row's first retry; doubles per try, capped at 5 min")
    embedder_backoff: float = _setting(2.0, "seconds a job first waits when its embedder is down; doubles per failed try")
    embedder_backoff_max: float = _setting(60.0, "longest wait between tries of an embedder that is down")
    max_row_chars: int = _setting(
        1 << 20,
        "largest row text embedded (characters of its embedded columns); a longer row is parked at once, before inference",
    )
    max_body_bytes: int = _setting(1 << 20, "largest accepted request body")
    statement_timeout: float = _setting(30.0, "seconds any one statement of an API request may run (0: no limit)")
    openai_models: str = _setting("", 'comma-separated models of an OpenAI-compatible API, used as "openai/<model>"')
    openai_base_url: str = _setting(DEFAULT_BASE_URL, "that API's base URL (OpenAI, Ollama, vLLM, TEI, ...)")
    openai_api_key: str | None = _setting(None, "that API's key", env="OPENAI_API_KEY")
    openai_max_retries: int = _setting(3, "quick retries of a failed request before the job waits")
    openai_max_tokens: int = _setting(512, "chunk size for remote models, counted by the default model's tokenizer")
    openai_backoff: float = _setting(0.5, "seconds before the first quick retry; doubles per retry (every provider)")
    ollama_base_url: str = _setting("http://localhost:11434", "Ollama's address, for ollama/<model>")
    cohere_api_key: str | None = _setting(None, "Cohere's key, for cohere/<model>", env="COHERE_API_KEY")
    cohere_base_url: str = _setting("https://api.cohere.com", "Cohere's API")
    voyage_api_key: str | None = _setting(None, "Voyage AI's key, for voyage/<model>", env="VOYAGE_API_KEY")
    voyage_base_url: str = _setting("https://api.voyageai.com/v1", "Voyage AI's API")
    voyage_output_dimension: int | None = _setting(None, "Voyage's output_dimension (default: the model's)")
    azure_openai_endpoint: str | None = _setting(
        None,
        "Azure OpenAI endpoint (https://<resource>.openai.azure.com), for azure/<deployment>",
        env="AZURE_OPENAI_ENDPOINT",
    )
    azure_openai_api_key: str | None = _setting(None, "Azure OpenAI's api-key", env="AZURE_OPENAI_API_KEY")
    azure_openai_api_version: str = _setting("2024-10-21", "Azure OpenAI's api-version")
    portkey_api_key: str | None = _setting(None, "Portkey's key, for portkey/<model>", env="PORTKEY_API_KEY")
    portkey_base_url: str = _setting("https://api.portkey.ai/v1", "Portkey's gateway")
    portkey_provider: str = _setting("", "Portkey's x-portkey-provider header (e.g. openai)")
    portkey_virtual_key: str = _setting("", "Portkey's x-portkey-virtual-key header")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``DATABASE_URL``, ``OPENAI_API_KEY`` and ``VECTORIZE_*``; keyword overrides (from flags) win."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        if "state_dir" not in values and env.get("STATE_DIRECTORY"):  # systemd's StateDirectory=
            values["state_dir"] = Path(env["STATE_DIRECTORY"].split(":")[0])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def env_name(setting: str) -> str:
    f = next(f for f in fields(Settings) if f.name == setting)
    return f.metadata.get("env") or f"VECTORIZE_{setting.upper()}"


def environment_help() -> str:
    """The ``environment:`` section of ``--help``, one line per setting."""
    lines = ["environment:"]
    for f in fields(Settings):
        default = "" if f.default is MISSING or f.default in (None, "") else f" (default {f.default})"
        if f.name == "models_dir":
            default = ""
        lines.append(f"  {env_name(f.name):31} {f.metadata['doc']}{default}")
    return "\n".join(lines) + "\n"


_KINDS: dict[str, type] = {"Path": Path, "int": int, "float": float}
_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _parse(name: str, annotation: object, raw: str) -> object:
    text = str(annotation).replace(" | None", "")
    if text == "bool":
        if raw.lower() not in _BOOLEANS:
            raise ValueError(f"{env_name(name)}={raw!r} is not true or false")
        return _BOOLEANS[raw.lower()]
    kind = _KINDS.get(text, str)
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from exc
