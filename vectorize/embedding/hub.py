"""Sentence-transformers models from the Hugging Face hub, named as there (``BAAI/bge-small-en-v1.5``,
``sentence-transformers/multi-qa-MiniLM-L6-cos-v1``): fetched with ``huggingface_hub`` on first use,
so its cache and settings apply (``HF_HOME``, ``HF_TOKEN`` for gated or private models,
``HF_ENDPOINT`` for a mirror, ``HF_HUB_OFFLINE``); described by their own configuration files (the
architecture, pooling, normalisation, window); then exported and tuned like the built-in model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vectorize.embedding.build.architectures import SUPPORTED, UnsupportedArchitecture
from vectorize.embedding.build.checkpoint import CheckpointInfo, read_checkpoint_info, weight_files
from vectorize.embedding.errors import EmbedderUnavailable

#: What describes a model: small files, fetched before any weights to check it can run here.
CONFIG_FILES = ["config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "*/config.json"]
#: And what runs it.
RUN_FILES = ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
#: ``<org>/<name>`` as the hub spells repositories.
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _files(info: CheckpointInfo) -> list[str]:
    """What a model is fetched with: its configuration, what runs it, its Dense layers' weights."""
    return CONFIG_FILES + RUN_FILES + weight_files(info)


class HubModelRefused(ValueError):
    """The model cannot run here whatever the network does: not on the hub, custom code, or an
    architecture the exporter does not build. The message says which."""


@dataclass
class Progress:
    """How far a model's download is: bytes written so far of the bytes it needs."""

    done: int = 0
    total: int | None = None

    def describe(self) -> str:
        if not self.total:
            return ""
        return f" ({min(100, 100 * self.done // self.total)}% of {human_size(self.total)})"


def human_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _recording_bar(progress: Progress) -> type:
    """huggingface_hub's own progress bar (shown on a terminal, as ``vectorize models pull`` does),
    which also counts the bytes written into ``progress`` for the job's waiting reason."""
    from huggingface_hub.utils import tqdm

    class RecordingBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # snapshot_download's bar of bytes written; its others count files or bytes received.
            self._records = kwargs.get("name") == "huggingface_hub.snapshot_download"
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._records:
                progress.done += int(n or 0)
            return super().update(n)

    return RecordingBar


class Hub:
    def __init__(self, cache_dir: Path | None = None, offline: bool | None = None, endpoint: str | None = None) -> None:
        """``cache_dir``/``offline``/``endpoint``: None leaves them to huggingface_hub (HF_HOME,
        HF_HUB_OFFLINE, HF_ENDPOINT)."""
        self.cache_dir = cache_dir
        self.offline = offline
        self.endpoint = endpoint
        self._progress: dict[str, Progress] = {}

    def progress(self, name: str) -> str:
        """`` (42% of 90.9 MB)`` while ``name`` downloads, else ""."""
        current = self._progress.get(name)
        return current.describe() if current else ""

    def download_size(self, name: str, info: CheckpointInfo) -> int | None:
        """Bytes the model ``describe`` gave ``info`` of still needs from the hub (0: all in the
        cache); None when the hub cannot be asked (offline, unreachable)."""
        from huggingface_hub import snapshot_download

        try:
            planned = snapshot_download(
                name, allow_patterns=_files(info), cache_dir=self.cache_dir, endpoint=self.endpoint, dry_run=True
            )
        except Exception:  # offline, unreachable, refused: the size is unknown, which the caller says
            return None
        return sum(item.file_size or 0 for item in planned if item.will_download)

    def tokenizer(self, name: str) -> Path | None:
        """The model's tokenizer.json (a small file, fetched alone), to count a dry run's tokens
        before the weights are here; None if it has none."""
        path = self._snapshot(name, ["tokenizer.json"]) / "tokenizer.json"
        return path if path.exists() else None

    def _snapshot(self, name: str, patterns: list[str], progress: Progress | None = None) -> Path:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            # None leaves each to huggingface_hub's settings (HF_HOME; HF_HUB_OFFLINE applies anyway).
            folder = snapshot_download(
                name,
                allow_patterns=patterns,
                cache_dir=self.cache_dir,
                local_files_only=bool(self.offline),
                endpoint=self.endpoint,
                tqdm_class=_recording_bar(progress) if progress else None,
            )
            return Path(folder)
        except GatedRepoError:
            raise EmbedderUnavailable(
                f"model {name} is gated on the Hugging Face hub: set HF_TOKEN to a token allowed to read it"
            ) from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise HubModelRefused(f"model {name} is not on the Hugging Face hub (or it is private: set HF_TOKEN)") from None
        except LocalEntryNotFoundError:
            if self.offline or constants.is_offline_mode():  # nothing will ever arrive: refused, not waited for
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
        kind = data.get("model_type") or "unknown"
        try:
            return read_checkpoint_info(folder)
        except UnsupportedArchitecture as exc:  # its words list the supported architectures
            raise HubModelRefused(f"model {name} ({kind}) cannot run here: {exc}") from None
        except ValueError as exc:
            raise HubModelRefused(f"model {name} ({kind}) cannot run here: {exc}; supported architectures: {SUPPORTED}") from None

    def fetch(self, name: str, info: CheckpointInfo) -> Path:
        """Every file the model (``describe``'s ``info``) runs from, in the hub cache; the folder they
        are in. While it runs, ``progress(name)`` says how far it is."""
        progress = self._progress[name] = Progress(total=None if self.offline else self.download_size(name, info))
        try:
            folder = self._snapshot(name, _files(info), progress)
        finally:
            del self._progress[name]
        missing = [f for f in ("model.safetensors", "tokenizer.json", *weight_files(info)) if not (folder / f).exists()]
        if missing:
            raise HubModelRefused(f"model {name} has no {' or '.join(missing)} on the hub (safetensors weights are required)")
        return folder
