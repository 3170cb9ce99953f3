"""The ONNX export matches sentence-transformers' own embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vectorize.embedding.catalog import DEFAULT_MODEL as MODEL
from vectorize.embedding.catalog import ModelCatalog

from .helpers import FIXTURES


def _reference() -> list[dict]:
    return json.loads((FIXTURES / "minilm_reference.json").read_text())["items"]


def test_every_reference_embedding_matches(catalog: ModelCatalog) -> None:
    items = _reference()
    got = catalog.get(MODEL).embed([item["text"] for item in items])
    want = np.array([item["embedding"] for item in items], dtype=np.float32)
    cosine = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= 0.9999, f"text {items[worst]['text'][:40]!r}: cosine {cosine[worst]:.6f}"
    # The set covers the edge cases the engine must get right.
    assert any(item["text"] == "" for item in items)
    assert any(item["token_count"] > 256 for item in items)


def test_embeddings_do_not_depend_on_batch_company(catalog: ModelCatalog) -> None:
    """Padding must be masked out: a text embeds the same alone and beside a long one."""
    encoder = catalog.get(MODEL)
    long_text = _reference()[-1]["text"]
    alone = encoder.embed(["camping gear"])[0]
    together = encoder.embed(["camping gear", long_text])[0]
    assert float(alone @ together) >= 0.99999
    assert np.isclose(np.linalg.norm(alone), 1.0, atol=1e-5)


def test_empty_input_gives_empty_matrix(catalog: ModelCatalog) -> None:
    assert catalog.get(MODEL).embed([]).shape == (0, 384)


@pytest.mark.parametrize("text", ["x" * 1_000_000, "🚲" * 5000])
def test_huge_texts_are_truncated(catalog: ModelCatalog, text: str) -> None:
    vector = catalog.get(MODEL).embed([text])[0]
    assert np.isfinite(vector).all() and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


def test_int8_model_stays_close_to_the_reference(catalog: ModelCatalog) -> None:
    """The opt-in int8 model: quantised MatMuls, sensitive layers kept fp32 (see its manifest)."""
    items = _reference()
    got = catalog.get("sentence-transformers/all-MiniLM-L6-v2-int8").embed([item["text"] for item in items])
    want = np.array([item["embedding"] for item in items], dtype=np.float32)
    cosine = (got * want).sum(axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.995, (cosine.min(), cosine.mean())


def test_export_and_check_a_local_checkpoint_directory(tmp_path) -> None:
    """`models export --from DIR` then `models check --reference`: the path a user with their
    own BERT-family checkpoint follows (here: a copy of the MiniLM files in a plain folder)."""
    import shutil
    import subprocess
    import sys

    from vectorize.embedding.manifests import ModelManifest, source_dir
    from vectorize.paths import MODELS_DIR

    checkpoint = tmp_path / "my-minilm"
    shutil.copytree(source_dir(ModelManifest.from_file(MODELS_DIR / "all-MiniLM-L6-v2.json")), checkpoint)
    models_dir = tmp_path / "models"
    env = {"VECTORIZE_MODELS_DIR": str(models_dir), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vectorize", "models", *args], env=env, capture_output=True, text=True, timeout=300
        )

    exported = run("export", "local/my-minilm", "--from", str(checkpoint))
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((models_dir / "my-minilm.json").read_text())
    assert manifest["dimension"] == 384 and manifest["max_tokens"] == 256 and manifest["pooling"] == "mean"
    checked = run("check", "local/my-minilm", "--reference", str(FIXTURES / "minilm_reference.json"))
    assert checked.returncode == 0, checked.stderr
    assert "cosine min 0.9999" in checked.stdout or "cosine min 1.0000" in checked.stdout
    # A reference the model does not reproduce fails the check.
    wrong = json.loads((FIXTURES / "minilm_reference.json").read_text())
    wrong["items"][0]["embedding"] = [-x for x in wrong["items"][0]["embedding"]]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    failed = run("check", "local/my-minilm", "--reference", str(tmp_path / "wrong.json"))
    assert failed.returncode == 1 and "below the required" in failed.stderr
    listed = run("list")
    assert "local/my-minilm" in listed.stdout and "yes" in listed.stdout


def test_a_changed_manifest_is_exported_again(tmp_path) -> None:
    """An export remembers what it was built from; editing the manifest (here: the truncation)
    must not keep serving the old graph."""
    from dataclasses import replace

    from vectorize.embedding.manifests import ensure_exported, is_exported, load_manifests
    from vectorize.paths import MODELS_DIR

    manifest = load_manifests(MODELS_DIR)[MODEL]
    ensure_exported(manifest, tmp_path)
    assert is_exported(manifest, tmp_path)
    stamp = (tmp_path / manifest.slug / "export.sha256").read_text()
    changed = replace(manifest, max_tokens=128)
    assert not is_exported(changed, tmp_path)
    ensure_exported(changed, tmp_path)
    assert is_exported(changed, tmp_path) and (tmp_path / manifest.slug / "export.sha256").read_text() != stamp


@pytest.mark.slow
def test_int8_keeps_quality_and_neighbours_on_real_descriptions(catalog: ModelCatalog) -> None:
    """The issue's int8 targets on 1000 of the benchmark's package descriptions. fp32 stands in
    for sentence-transformers here (the reference test above pins it at cosine >= 0.9999);
    `make bench` measures against sentence-transformers itself on 5000 texts."""
    from bench.corpus import load_texts
    from vectorize.embedding.build.tuning import top_k_overlap

    texts = load_texts(1000)
    fp32 = catalog.get(MODEL).embed(texts)
    int8 = catalog.get("sentence-transformers/all-MiniLM-L6-v2-int8").embed(texts)
    cosine = (fp32 * int8).sum(axis=1)
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.995, (cosine.min(), cosine.mean())
    overlap = top_k_overlap(fp32, int8, 10)
    assert overlap >= 0.9, overlap


def test_long_texts_are_tokenised_by_their_head_with_the_same_tokens(catalog) -> None:
    """Truncating a 1 MB text needs only its head tokenised; the tokens are exactly the full
    tokenisation's, whatever the words, scripts and runs of whitespace."""
    import random

    from vectorize.embedding.encoder import encode_truncated

    tokenizer = catalog.get(MODEL).tokenizer
    rng = random.Random(1)
    words = ["alpha", "beta", "x" * 200, "日本語のテキスト", "co-operate", "don't", "\n", "  ", "naïve"]
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (1, 10, 3000, 10_000, 50_000)]
    texts += ["y" * 40_000, " " * 30_000 + "word " * 10, "word " * 3000 + " " * 30_000]
    ours = encode_truncated(tokenizer, texts)
    full = tokenizer.encode_batch(texts, add_special_tokens=True)
    assert [a.ids for a in ours] == [b.ids for b in full]
    assert [a.offsets for a in ours] == [b.offsets for b in full]
