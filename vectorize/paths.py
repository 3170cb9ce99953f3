"""Where the project's non-Python files are: the SQL inside the package, the model manifests in the
repo's models/ folder.

The SQL ships inside the package (``vectorize/sql``), in a checkout and in a wheel alike. The
manifests sit beside the package in a source checkout (and an editable install), where exports
are written next to them; a wheel carries copies inside the package as ``_models``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    beside = _PACKAGE.parent / name
    if beside.is_dir():
        return beside
    return _PACKAGE / f"_{name}"


SQL_DIR = _PACKAGE / "sql"
MODELS_DIR = _find("models")
