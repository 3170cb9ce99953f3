"""The benchmark corpus: the first 5000 Debian package descriptions, as issue texts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "debian_descriptions_5000.jsonl.gz"


def load_texts(limit: int | None = None) -> list[str]:
    """``<package>: <short_description>. <long_description>`` with the long lines joined by spaces."""
    texts = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            long_text = " ".join(part.strip() for part in item["long_description"].splitlines() if part.strip())
            texts.append(f"{item['package']}: {item['short_description']}. {long_text}")
            if limit is not None and len(texts) >= limit:
                break
    return texts


def load_rows(limit: int | None = None) -> list[dict]:
    rows = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows
