"""Per-machine engine settings: measured once per CPU, stored, reused, and skippable.

The tuner runs for real (real ONNX sessions on the real model) with a shrunken plan, so a
test takes seconds instead of the minute a full tuning takes."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from vectorize.cli.serve import model_catalog
from vectorize.config import Settings
from vectorize.embedding.build.export import export_checkpoint
from vectorize.embedding.build.quantize import quantize_int8
from vectorize.embedding.build.smoothing import activation_ranges, smooth_graph
from vectorize.embedding.build.tuning import (
    MEAN_COSINE,
    MIN_COSINE,
    MIN_TOP10_OVERLAP,
    Tuner,
    TuningPlan,
    int8_variants,
    layouts,
    load_calibration_texts,
    load_tuning_texts,
    top_k_overlap,
)
from vectorize.embedding.build.tuning_records import (
    EngineSettings,
    TuningRecord,
    TuningStore,
    cpu_flags,
    cpu_identity,
    default_settings,
)
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.embedding.encoder import Encoder
from vectorize.embedding.manifests import Int8Variant, export_paths, load_manifests, source_dir
from vectorize.paths import MODELS_DIR

INT8_MODEL = "sentence-transformers/all-MiniLM-L6-v2-int8"
QUICK = TuningPlan(budgets=(256, 1024), timing_texts=24, rounds=1, quality_texts=80)


def records(folder: Path) -> dict:
    return json.loads((folder / "tuned" / "records.json").read_text())


def quick_tuner(folder: Path, *, enabled: bool = True) -> Tuner:
    return Tuner(TuningStore([folder]), MODELS_DIR, 2, enabled=enabled, plan=QUICK)


def test_first_use_tunes_stores_and_later_uses_reuse(tmp_path: Path) -> None:
    manifest = load_manifests(MODELS_DIR)[DEFAULT_MODEL]
    settings, graph = quick_tuner(tmp_path).settings_for(manifest)
    stored = records(tmp_path)[DEFAULT_MODEL][cpu_identity(2)]
    # Every candidate was timed; the fastest is the one kept.
    speeds = {name: figures["texts_per_s"] for name, figures in stored["figures"].items()}
    assert len(speeds) == len(layouts(2)) * len(QUICK.budgets)
    assert settings.describe() == max(speeds, key=speeds.__getitem__)
    assert (settings.sessions, settings.threads_per_session) in layouts(2) and settings.token_budget in QUICK.budgets
    assert graph is None  # fp32 runs the manifest's own export

    # A later start on the same CPU measures nothing: the record is untouched and the same settings come back.
    before = (tmp_path / "tuned" / "records.json").stat().st_mtime_ns
    again, _ = quick_tuner(tmp_path).settings_for(manifest)
    assert again == settings
    assert (tmp_path / "tuned" / "records.json").stat().st_mtime_ns == before

    # The catalogue runs the model with them.
    catalog = ModelCatalog(MODELS_DIR, 2, tuner=quick_tuner(tmp_path))
    encoder = catalog.get(DEFAULT_MODEL)
    assert len(encoder.sessions) == settings.sessions and encoder.token_budget == settings.token_budget
    assert encoder.embed(["a tuned engine still embeds"]).shape == (1, 384)


def test_a_record_from_another_cpu_is_not_reused(tmp_path: Path) -> None:
    """A state dir copied from another machine (or a VM moved to another host) tunes anew and keeps both."""
    manifest = load_manifests(MODELS_DIR)[DEFAULT_MODEL]
    quick_tuner(tmp_path).settings_for(manifest)
    data = records(tmp_path)
    other_cpu = "AMD EPYC 7B13 [avx2 fma] x2 cores, onnxruntime 1.32.0"
    recorded = data[DEFAULT_MODEL].pop(cpu_identity(2))
    data[DEFAULT_MODEL][other_cpu] = {**recorded, "settings": {**recorded["settings"], "token_budget": 4096}}
    (tmp_path / "tuned" / "records.json").write_text(json.dumps(data))

    settings, _ = quick_tuner(tmp_path).settings_for(manifest)
    assert settings.token_budget in QUICK.budgets  # measured here, not the other machine's 4096
    assert set(records(tmp_path)[DEFAULT_MODEL]) == {other_cpu, cpu_identity(2)}


def test_layouts_are_timed_as_the_worker_runs_them_and_a_new_timing_method_tunes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker keeps BATCHES_IN_FLIGHT batches embedding at once, so each layout is timed with
    that many calls at once (alone, a one-session layout looked faster than it runs in a backfill);
    a choice stored by an older way of timing is measured again."""
    import threading

    from vectorize.embedding.build import tuning
    from vectorize.embedding.encoder import BATCHES_IN_FLIGHT

    running, most = 0, 0
    lock = threading.Lock()
    embed = Encoder.embed

    def counted(self: Encoder, texts, *args, **kwargs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return embed(self, texts, *args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(Encoder, "embed", counted)
    manifest = load_manifests(MODELS_DIR)[DEFAULT_MODEL]
    quick_tuner(tmp_path).settings_for(manifest)
    assert most == BATCHES_IN_FLIGHT == 2
    first = records(tmp_path)[DEFAULT_MODEL][cpu_identity(2)]

    monkeypatch.setattr(tuning, "TIMING_METHOD", "one call at a time")
    quick_tuner(tmp_path).settings_for(manifest)
    again = records(tmp_path)[DEFAULT_MODEL][cpu_identity(2)]
    assert again["fingerprint"] == tuning.tuning_fingerprint(manifest) != first["fingerprint"]
    assert again["tuned_at"] >= first["tuned_at"]


def test_tuning_off_uses_the_defaults_and_writes_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for manifest in MODELS_DIR.glob("*.json"):
        shutil.copy(manifest, models)
    settings = replace(Settings(), models_dir=models, state_dir=tmp_path / "state", tune="off", threads=2)
    tuner = model_catalog(settings).tuner
    chosen, graph = tuner.settings_for(load_manifests(models)[DEFAULT_MODEL])
    assert (chosen, graph) == (default_settings(2), None)
    assert not (tmp_path / "state" / "tuned" / "records.json").exists()
    assert not (models / "tuned" / "records.json").exists()
    with pytest.raises(ValueError, match="VECTORIZE_TUNE='sometimes' is not valid: use auto or off"):
        model_catalog(replace(settings, tune="sometimes"))


def test_a_choice_stored_at_install_time_is_reused_by_a_service_with_a_state_dir(tmp_path: Path) -> None:
    """`make models` tunes into the models dir; the hardened service (state dir set, install dir
    read-only) reads that choice and measures nothing while the CPU is the same."""
    models, state = tmp_path / "models", tmp_path / "state"
    models.mkdir()
    for manifest in MODELS_DIR.glob("*.json"):
        shutil.copy(manifest, models)
    manifest = load_manifests(models)[DEFAULT_MODEL]
    Tuner(TuningStore([models]), MODELS_DIR, 2, plan=QUICK).settings_for(manifest)
    installed = records(models)[DEFAULT_MODEL][cpu_identity(2)]["settings"]
    tuner = model_catalog(replace(Settings(), models_dir=models, state_dir=state, threads=2)).tuner
    chosen, _ = tuner.settings_for(manifest)
    assert chosen == EngineSettings(**{**installed, "keep_fp32": None})
    assert not (state / "tuned" / "records.json").exists()


@pytest.mark.slow
def test_int8_keeps_the_fastest_variant_inside_the_quality_gate(tmp_path: Path) -> None:
    manifest = load_manifests(MODELS_DIR)[INT8_MODEL]
    settings, graph = quick_tuner(tmp_path).settings_for(manifest)
    figures = records(tmp_path)[INT8_MODEL][cpu_identity(2)]["figures"]
    variants = {name: f for name, f in figures.items() if name.startswith("int8")}
    assert len(variants) == len(int8_variants(manifest)) == len(manifest.tune_keep_fp32) + len(manifest.tune_smoothing)
    passing = {name: f["texts_per_s"] for name, f in variants.items() if f["passes_gate"]}
    # The manifest's own variant is measured too, and a variant passes only with the gate's numbers.
    for f in variants.values():
        if f["passes_gate"]:
            assert f["cosine_min"] >= 0.98 and f["cosine_mean"] >= 0.995 and f["top10_overlap"] >= 0.9
    # On every CPU a variant with every full GEMM int8 passes: the split graph in 7-bit weights,
    # which no CPU's int8 kernel can saturate (on AVX2 the full-range one fails the gate).
    all_int8 = [name for name, f in variants.items() if "fp32 kept: none" in name and "7-bit weights" in name]
    assert all_int8 and all(variants[name]["passes_gate"] for name in all_int8), variants
    variant = settings.variant or Int8Variant(manifest.keep_fp32)
    if passing:
        assert f"int8{variant.describe()}" == max(passing, key=passing.__getitem__)
    if settings.keep_fp32 is None:
        assert graph is None
    else:
        assert graph is not None and graph.exists()
    # Candidates that lost are not left on disk.
    assert len(list((tmp_path / "tuned" / manifest.slug).glob("*.onnx"))) == (0 if graph is None else 1)


def test_a_graph_no_record_names_is_removed_when_a_choice_is_stored(tmp_path: Path) -> None:
    """Re-tuning replaces a CPU's graph: the old one goes; another CPU's chosen graph stays."""
    store = TuningStore([tmp_path])
    folder = store.writable_folder()
    assert folder is not None
    graphs = folder / "some-model"
    graphs.mkdir()
    settings = EngineSettings(2, 1, 512, (), 0.7, 2, "s7")
    store.save(folder, "m", TuningRecord(cpu="other cpu", settings=settings, graph="some-model/model-other-cpu.onnx"))
    store.save(folder, "m", TuningRecord(cpu="this cpu", settings=settings, graph="some-model/model-old.onnx"))
    for name in ("model-old.onnx", "model-other-cpu.onnx", "model-new.onnx"):
        (graphs / name).write_bytes(b"graph")
    store.save(folder, "m", TuningRecord(cpu="this cpu", settings=settings, graph="some-model/model-new.onnx"))
    assert sorted(p.name for p in graphs.iterdir()) == ["model-new.onnx", "model-other-cpu.onnx"]
    found = store.find("m", "other cpu", "")
    assert found is not None and found[0].settings == settings


def test_cli_tune_and_list(tmp_path: Path) -> None:
    """`vectorize models list` shows what this CPU runs; `models tune` reuses a stored choice."""
    env = {"VECTORIZE_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "VECTORIZE_TUNE": "off"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vectorize", "models", *args], env=env, capture_output=True, text=True, timeout=300
        )

    before = run("list")
    assert before.returncode == 0 and f"CPU: {cpu_identity(2)}" in before.stdout
    quick_tuner(tmp_path).settings_for(load_manifests(MODELS_DIR)[DEFAULT_MODEL])
    settings = quick_tuner(tmp_path).stored(load_manifests(MODELS_DIR)[DEFAULT_MODEL])[0].settings
    listed = run("list")
    line = next(line for line in listed.stdout.splitlines() if line.startswith(DEFAULT_MODEL + " "))
    assert settings.describe() in line
    tuned = run("tune", DEFAULT_MODEL)
    assert tuned.returncode == 0, tuned.stderr
    assert f"{DEFAULT_MODEL}: {settings.describe()} (measured" in tuned.stdout
    unknown = run("tune", "no/such-model")
    assert unknown.returncode == 2 and "unknown model 'no/such-model'" in unknown.stderr


def exact_int8_formats() -> tuple[str, ...]:
    """Weight formats whose int8 GEMMs sum exactly on this CPU, so that quality comparisons
    between graphs hold as they do on every CPU: 7-bit weights cannot saturate anywhere; full-range
    int8 weights saturate in the 16-bit pair sums of AVX2 and pre-VNNI AVX-512 (registry.WEIGHT_FORMATS)."""
    flags = cpu_flags()
    exact_s8 = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or platform.machine() not in ("x86_64", "AMD64")
    return ("s7", "s8") if exact_s8 else ("s7",)


@dataclass
class SmoothingBench:
    """The fp32 export, its activation ranges and its smoothed graph (alpha 0.7), built once for the
    smoothing tests, with the fp32 embeddings of 240 tuning texts to compare against."""

    folder: Path
    fp32: Path
    smoothed: Path
    ranges: dict[str, np.ndarray]
    reference: np.ndarray
    embed: Callable[[Path], np.ndarray]

    def quantised(self, graph: Path, weights: str) -> np.ndarray:
        """The embeddings of ``graph`` with every GEMM quantised in ``weights``' format (built once)."""
        out = self.folder / f"{graph.stem}-{weights}.onnx"
        if not out.exists():
            quantize_int8(graph, out, (), weights)
        return self.embed(out)


@pytest.fixture(scope="module")
def smoothing_bench(tmp_path_factory: pytest.TempPathFactory) -> SmoothingBench:
    folder = tmp_path_factory.mktemp("smoothing")
    manifest = load_manifests(MODELS_DIR)[INT8_MODEL]
    _, tokenizer = export_paths(manifest, MODELS_DIR)
    fp32, smoothed = folder / "fp32.onnx", folder / "smoothed.onnx"
    export_checkpoint(source_dir(manifest), fp32)
    ranges = activation_ranges(fp32, tokenizer, manifest.max_tokens, load_calibration_texts()[:48])
    smooth_graph(fp32, smoothed, ranges, 0.7)
    texts = load_tuning_texts()[:240]

    def embed(path: Path) -> np.ndarray:
        return Encoder(path, tokenizer, dimension=manifest.dimension, max_tokens=manifest.max_tokens, threads=2).embed(texts)

    return SmoothingBench(folder, fp32, smoothed, ranges, embed(fp32), embed)


@pytest.mark.slow
def test_smoothing_keeps_the_function_and_makes_all_int8_closer_to_fp32(smoothing_bench: SmoothingBench) -> None:
    """Smoothing only moves scale between activations and weights: the fp32 graph computes the
    same embeddings on every CPU; quantised, every layer int8, it is nearer the fp32 output than
    without -- where the int8 sums are exact (smoothing enlarges weights, and on a CPU without VNNI
    full-range int8 weights then saturate more: there it holds for 7-bit weights)."""
    bench, reference = smoothing_bench, smoothing_bench.reference
    assert (bench.embed(bench.smoothed) * reference).sum(axis=1).min() >= 0.99999
    for weights in exact_int8_formats():
        plain = bench.quantised(bench.fp32, weights)
        better = bench.quantised(bench.smoothed, weights)
        assert (better * reference).sum(axis=1).mean() > (plain * reference).sum(axis=1).mean(), weights
        assert top_k_overlap(reference, better, 10) >= top_k_overlap(reference, plain, 10), weights


@pytest.mark.slow
def test_outlier_channels_in_fp32_keep_the_function_and_bring_all_int8_closer_than_smoothing(
    smoothing_bench: SmoothingBench,
) -> None:
    """The second feed-forward GEMMs split into two fp32 outlier channels and an int8 rest: in fp32
    the same embeddings; quantised, nearer fp32 than smoothing every GEMM, with every full GEMM int8;
    in 7-bit weights (exact on every CPU) inside the quality gate."""
    import onnx

    bench, reference = smoothing_bench, smoothing_bench.reference
    split = bench.folder / "split.onnx"
    smooth_graph(bench.fp32, split, bench.ranges, 0.7, outlier_channels=2)
    assert (bench.embed(split) * reference).sum(axis=1).min() >= 0.99999
    for weights in exact_int8_formats():
        smoothed_only = (bench.quantised(bench.smoothed, weights) * reference).sum(axis=1)
        vectors = bench.quantised(split, weights)
        with_outliers = (vectors * reference).sum(axis=1)
        assert with_outliers.mean() > smoothed_only.mean() and with_outliers.min() > smoothed_only.min(), weights
        graph = onnx.load(str(bench.folder / f"split-{weights}.onnx")).graph
        fp32_gemms = [node.name for node in graph.node if node.op_type == "MatMul" and "_ff2_" in node.name]
        assert len(fp32_gemms) == 6 and all(name.endswith("_outliers") for name in fp32_gemms)
        if weights == "s7":
            assert with_outliers.min() >= MIN_COSINE and with_outliers.mean() >= MEAN_COSINE
            assert top_k_overlap(reference, vectors, 10) >= MIN_TOP10_OVERLAP
