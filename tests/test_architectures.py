"""Every architecture and pooling kind the exporter builds equals sentence-transformers.

The checkpoints are tiny random-weight ones (bench/make_tiny_models.py made them and the
reference embeddings with sentence-transformers and PyTorch, which never run here): BERT with
mean pooling and e5's prompts, with CLS pooling and a Dense layer and bge's query instruction,
with three poolings concatenated; RoBERTa with max pooling and a byte-level BPE tokenizer;
XLM-RoBERTa with a sentencepiece-style unigram tokenizer on non-Latin text; MPNet (relative
position bias) with weighted-mean and mean pooling; DistilBERT with last-token pooling and a
Dense layer. Rows are embedded as documents and search text as queries, prompts applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vectorize.embedding.build.checkpoint import read_checkpoint_info
from vectorize.embedding.manifests import ModelManifest, load_encoder, write_manifest

TINY = Path(__file__).parent / "fixtures" / "tiny_models"
CHECKPOINTS = sorted(p.name for p in TINY.iterdir() if (p / "reference.json").exists())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_every_architecture_and_pooling_is_covered() -> None:
    kinds = {(read_checkpoint_info(TINY / name).model_type, read_checkpoint_info(TINY / name).pooling) for name in CHECKPOINTS}
    assert {kind for kind, _ in kinds} == {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert"}
    modes = {mode for _, pooling in kinds for mode in pooling.split("+")}
    assert modes == {"mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_exported_embeddings_equal_sentence_transformers(name: str, tmp_path: Path) -> None:
    reference = json.loads((TINY / name / "reference.json").read_text())
    manifest = write_manifest(TINY / name, f"tiny/{name}", tmp_path)
    encoder = load_encoder(manifest, tmp_path, threads=1)
    assert encoder.dimension == len(reference["document"][0]) == manifest.dimension
    for kind in ("document", "query"):
        ours = encoder.embed(reference["texts"], kind=kind)
        cosines = _cosines(ours, np.array(reference[kind], dtype=np.float32))
        assert cosines.min() >= 0.9999, (kind, cosines.round(5).tolist())


def test_prompts_and_multilingual_text_reach_the_model(tmp_path: Path) -> None:
    """The prompt changes the query's vector (so the comparison above checks it), and the
    unigram tokenizer reads non-Latin text as its own tokens, not as unknowns."""
    name = "xlm-roberta-mean"
    manifest = write_manifest(TINY / name, f"tiny/{name}", tmp_path)
    encoder = load_encoder(manifest, tmp_path, threads=1)
    texts = json.loads((TINY / name / "reference.json").read_text())["texts"]
    assert _cosines(encoder.embed(texts, kind="query"), encoder.embed(texts, kind="document")).max() < 0.9999
    unknown = encoder.tokenizer.token_to_id("<unk>")
    for text in ("лиса прыгает через собаку.", "素早い狐が犬を飛び越える。", "Η αλεπού πηδά."):
        assert unknown not in encoder.tokenizer.encode(text).ids[1:-1], text


def test_the_window_truncates_like_sentence_transformers(tmp_path: Path) -> None:
    """The last reference text is longer than the window: equal embeddings mean the same cut."""
    name = "roberta-max"
    manifest = write_manifest(TINY / name, f"tiny/{name}", tmp_path)
    encoder = load_encoder(manifest, tmp_path, threads=1)
    texts = json.loads((TINY / name / "reference.json").read_text())["texts"]
    assert len(encoder.tokenizer.encode(texts[-1]).ids) == manifest.max_tokens == 64
    assert len(encoder.counter.offsets([texts[-1]])[0]) > 64


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"config.json": {"model_type": "gpt2"}}, "model_type 'gpt2' is not supported; supported: BERT"),
        ({"config.json": {"hidden_act": "gelu_new"}}, "hidden_act 'gelu_new'"),
        ({"1_Pooling/config.json": {"pooling_mode": "median"}}, "pooling ['median'] is not supported"),
        ({"1_Pooling/config.json": {"include_prompt": False}}, "include_prompt"),
        ({"2_Dense/config.json": {"activation_function": "my.Activation"}}, "Dense activation 'my.Activation'"),
    ],
)
def test_what_cannot_be_built_is_refused_by_name(change: dict, words: str, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(TINY / "bert-cls-dense", model)
    for file, values in change.items():
        data = json.loads((model / file).read_text())
        (model / file).write_text(json.dumps({**data, **values}))
    with pytest.raises(ValueError) as refused:
        read_checkpoint_info(model)
    assert words in str(refused.value)


def test_a_manifest_pins_the_dense_weights_too(tmp_path: Path) -> None:
    manifest = write_manifest(TINY / "bert-cls-dense", "tiny/dense", tmp_path)
    assert set(manifest.checksums) == {"model.safetensors", "tokenizer.json", "2_Dense/model.safetensors"}
    assert ModelManifest.from_file(tmp_path / "dense.json").dimension == 16


@pytest.mark.parametrize("name", ["mpnet-mean", "xlm-roberta-mean", "bert-cls-dense"])
def test_every_model_s_int8_variant_goes_through_the_quality_gate(name: str, tmp_path: Path) -> None:
    """A model added from a directory (or the hub) gets an int8 sibling whose graphs tuning builds
    and gates against the model's fp32 graph; the chosen one passes the gate (or is fp32)."""
    from vectorize.embedding.build.tuning import FP32_FALLBACK, Tuner, TuningPlan, TuningStore
    from vectorize.embedding.manifests import load_manifests

    write_manifest(TINY / name, f"tiny/{name}", tmp_path)
    manifest = load_manifests(tmp_path)[f"tiny/{name}-int8"]
    assert manifest.precision == "int8" and manifest.dimension == len(
        json.loads((TINY / name / "reference.json").read_text())["document"][0]
    )
    if name.startswith("mpnet"):  # QAttention has no input for MPNet's position bias
        assert all(f"l{i}_attention" in manifest.keep_fp32 for i in range(2))
    plan = TuningPlan(budgets=(1024,), timing_texts=16, rounds=1, quality_texts=60)
    record = Tuner(TuningStore([tmp_path]), tmp_path, 1, plan=plan).tune(manifest, tmp_path)
    gated = {label: figures for label, figures in record.figures.items() if "passes_gate" in figures}
    assert len(gated) >= 5, record.figures  # the default, all-int8 and three smoothed graphs, each gated
    variant = record.settings.variant
    if variant is not None and variant != FP32_FALLBACK:
        assert gated["int8" + variant.describe()]["passes_gate"] == 1.0
    encoder = load_encoder(manifest, tmp_path, threads=1, graph=tmp_path / record.graph if record.graph else None)
    reference = json.loads((TINY / name / "reference.json").read_text())
    cosines = _cosines(encoder.embed(reference["texts"]), np.array(reference["document"], dtype=np.float32))
    assert cosines.mean() >= 0.99, cosines.round(4).tolist()


def test_a_model_whose_int8_graphs_all_fail_the_gate_runs_in_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate no graph can pass (minimum cosine above 1): the int8 name runs the fp32 graph."""
    from vectorize.embedding.build import tuning
    from vectorize.embedding.manifests import load_manifests

    monkeypatch.setattr(tuning, "MIN_COSINE", 1.01)
    write_manifest(TINY / "bert-mean-prompts", "tiny/strict", tmp_path)
    manifest = load_manifests(tmp_path)["tiny/strict-int8"]
    plan = tuning.TuningPlan(budgets=(1024,), timing_texts=16, rounds=1, quality_texts=40)
    record = tuning.Tuner(tuning.TuningStore([tmp_path]), tmp_path, 1, plan=plan).tune(manifest, tmp_path)
    assert record.settings.variant == tuning.FP32_FALLBACK and record.graph
    assert not any(figures.get("passes_gate") for figures in record.figures.values())
    encoder = load_encoder(manifest, tmp_path, threads=1, graph=tmp_path / record.graph)
    reference = json.loads((TINY / "bert-mean-prompts" / "reference.json").read_text())
    cosines = _cosines(encoder.embed(reference["texts"]), np.array(reference["document"], dtype=np.float32))
    assert cosines.min() >= 0.9999


def test_models_add_makes_a_directory_a_model_and_its_int8_variant(tmp_path: Path) -> None:
    """`vectorize models add NAME --from DIR`: the model and NAME-int8 listed, the graph exported."""
    import subprocess
    import sys

    env = {"VECTORIZE_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vectorize", "models", *args], env=env, capture_output=True, text=True)

    added = run("add", "local/tiny-mpnet", "--from", str(TINY / "mpnet-mean"))
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "tiny-mpnet" / "model.onnx").exists()
    listed = run("list").stdout
    assert "local/tiny-mpnet " in listed and "local/tiny-mpnet-int8" in listed
    refused = run("add", "local/x", "--from", str(tmp_path / "absent"))
    assert refused.returncode == 1 and "is not a usable sentence-transformers directory" in refused.stderr
