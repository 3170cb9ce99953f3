"""Sentence-transformers models from the Hugging Face hub, named as there (``BAAI/bge-small-en-v1.5``,
``sentence-transformers/multi-qa-MiniLM-L6-cos-v1``): fetched with ``huggingface_hub`` on first use,
so its cache and settings apply (``HF_HOME``, ``HF_TOKEN`` for gated or private models,
``HF_ENDPOINT`` for a mirror, ``HF_HUB_OFFLINE``); described by their own configuration files (the
architecture, pooling, normalisation, window); then exported and tuned like the built-in model."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .architectures import SUPPORTED
from .checkpoint import CheckpointInfo, read_checkpoint_info, weight_files
from .errors import EmbedderUnavailable

#: What describes a model: small files, fetched before any weights to check it can run here.
CONFIG_FILES = ["config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "*/config.json"]
#: And what runs it.
RUN_FILES = ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
#: ``<org>/<name>`` as the hub spells repositories.
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubModelRefused(ValueError):
    """The model cannot run here whatever the network does: not on the hub, custom code, or an
    architecture the exporter does not build. The message says which."""


class Hub:
    def __init__(self, cache_dir: Path | None = None, offline: bool | None = None) -> None:
        """``cache_dir``/``offline``: None leaves them to huggingface_hub (HF_HOME, HF_HUB_OFFLINE)."""
        self.cache_dir = cache_dir
        self.offline = offline

    def _snapshot(self, name: str, patterns: list[str]) -> Path:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            # None leaves each to huggingface_hub's settings (HF_HOME; HF_HUB_OFFLINE applies anyway).
            folder = snapshot_download(
                name, allow_patterns=patterns, cache_dir=self.cache_dir, local_files_only=bool(self.offline)
            )
            return Path(folder)
        except GatedRepoError:
            raise EmbedderUnavailable(
                f"model {name} is gated on the Hugging Face hub: set HF_TOKEN to a token allowed to read it"
            ) from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise HubModelRefused(f"model {name} is not on the Hugging Face hub (or it is private: set HF_TOKEN)") from None
        except LocalEntryNotFoundError:
            if self.offline or constants.HF_HUB_OFFLINE:  # nothing will ever arrive: refused, not waited for
                raise HubModelRefused(
                    f"model {name} is not in the local Hugging Face cache, and downloads are off (HF_HUB_OFFLINE)"
                ) from None
            raise EmbedderUnavailable(f"model {name} cannot be fetched from the Hugging Face hub now") from None
        except Exception as exc:  # network down, offline without a cached copy, a mirror that answers 5xx
            raise EmbedderUnavailable(f"model {name} cannot be fetched from the Hugging Face hub now: {exc}") from None

    def describe(self, name: str) -> CheckpointInfo:
        """What the model is, from its configuration files alone; HubModelRefused if it cannot run here."""
        folder = self._snapshot(name, CONFIG_FILES)
        config = folder / "config.json"
        if not config.exists():
            raise HubModelRefused(f"model {name} has no config.json: not a transformers checkpoint")
        data = json.loads(config.read_text())
        if data.get("auto_map"):
            raise HubModelRefused(f"model {name} needs custom code (auto_map), which vectorize never runs")
        try:
            return read_checkpoint_info(folder)
        except ValueError as exc:
            kind = data.get("model_type") or "unknown"
            supported = "" if "supported:" in str(exc) else f"; supported architectures: {SUPPORTED}"
            raise HubModelRefused(f"model {name} ({kind}) cannot run here: {exc}{supported}") from None

    def fetch(self, name: str) -> Path:
        """Every file the model runs from, in the hub cache; the folder they are in."""
        dense = weight_files(self.describe(name))
        folder = self._snapshot(name, CONFIG_FILES + RUN_FILES + dense)
        missing = [f for f in ("model.safetensors", "tokenizer.json", *dense) if not (folder / f).exists()]
        if missing:
            raise HubModelRefused(f"model {name} has no {' or '.join(missing)} on the hub (safetensors weights are required)")
        return folder
