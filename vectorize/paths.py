"""Where the project's non-Python files are: the repo's sql/ and models/ folders.

In a source checkout (and an editable install) they sit beside the package;
a wheel carries copies inside the package as ``_sql`` and ``_models``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    beside = _PACKAGE.parent / name
    if beside.is_dir():
        return beside
    return _PACKAGE / f"_{name}"


SQL_DIR = _find("sql")
MODELS_DIR = _find("models")
