"""Settings from the environment, and --help generated from them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from vectorize.cli.main import build_parser
from vectorize.config import Settings, env_name, environment_help
from vectorize.service.search import RANKING_OPTIONS

SQL = Path(__file__).parent.parent.parent / "vectorize" / "sql"


def test_environment_is_read_and_typed() -> None:
    s = Settings.from_env(
        {"DATABASE_URL": "postgresql:///x", "VECTORIZE_PORT": "9000", "VECTORIZE_RETRY_BACKOFF": "0.5", "VECTORIZE_THREADS": "2"}
    )
    assert (s.database_url, s.port, s.retry_backoff, s.threads) == ("postgresql:///x", 9000, 0.5, 2)
    assert Settings.from_env({}, port=1234).port == 1234
    assert Settings.from_env({"OPENAI_API_KEY": "sk"}).openai_api_key == "sk"


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="VECTORIZE_BATCH_SIZE='many' is not a valid int"):
        Settings.from_env({"VECTORIZE_BATCH_SIZE": "many"})


def test_help_lists_every_setting() -> None:
    text = environment_help()
    for f in fields(Settings):
        assert env_name(f.name) in text
    assert environment_help() in build_parser().format_help()


def test_ranking_defaults_have_one_home() -> None:
    """The SQL function's defaults are the ones search.RANKING_OPTIONS names."""
    body = (SQL / "functions" / "05_search.sql").read_text()
    for name, default in RANKING_OPTIONS.items():
        found = re.search(rf"p_{name}\s+float8\s+default\s+([\d.]+)", body)
        assert found and float(found.group(1)) == default


def test_state_dir_comes_from_systemd_unless_set() -> None:
    """Under the hardened units the install dir is read-only; StateDirectory= gives a writable one."""
    assert Settings.from_env({}).state_dir is None
    assert Settings.from_env({"STATE_DIRECTORY": "/var/lib/vectorize"}).state_dir == Path("/var/lib/vectorize")
    both = {"STATE_DIRECTORY": "/var/lib/vectorize", "VECTORIZE_STATE_DIR": "/srv/state"}
    assert Settings.from_env(both).state_dir == Path("/srv/state")
