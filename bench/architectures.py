"""`make bench-architectures`: texts/s and memory of one model of each architecture the exporter
builds, fp32 and int8, on this machine (every figure printed with the CPU and its ISA flags).

all-MiniLM-L6-v2 runs from its real weights; the others are random-weight checkpoints of their
namesakes' shapes (bench/make_architecture_models.py; the hub is not reachable from every
machine, and speed and memory do not depend on trained values), all reading the same token ids.
Each model is exported in one process and measured in another per precision, so a peak RSS is
that engine's alone: its sessions (one per core, as the worker runs them), the tokenizer and
the batches in flight. The int8 figures are the int8 manifest's default graph, untuned (tuning
picks faster graphs inside its quality gate on each machine); its cosine to fp32 is printed for
the real weights only (random weights say nothing about quantisation error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import load_texts  # noqa: E402
from vectorize.embedding.build.tuning_records import cpu_description, cpu_flags  # noqa: E402
from vectorize.embedding.manifests import ensure_exported, load_encoder, load_manifests, source_dir, write_manifest  # noqa: E402
from vectorize.paths import MODELS_DIR  # noqa: E402

BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
CHECKPOINTS = ROOT / "bench" / ".models"
TEXTS = 256
ROUNDS = 3


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def export(folder: Path, name: str, models: Path) -> None:
    write_manifest(folder, name, models)
    for manifest in load_manifests(models).values():
        ensure_exported(manifest, models)


def measure(models: Path, name: str, vectors_out: Path) -> dict[str, float]:
    """In this process: load the exported graph with one session per core, time it, read the peak RSS."""
    import numpy as np

    texts = load_texts(TEXTS)
    encoder = load_encoder(load_manifests(models)[name], models)
    encoder.embed(texts[:8])
    speeds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        vectors = encoder.embed(texts)
        speeds.append(len(texts) / (time.perf_counter() - started))
    np.save(vectors_out, vectors)
    return {"texts_per_s": round(max(speeds), 1), "peak_rss_mb": round(_peak_rss_mb())}


def _run(*args: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", nargs=3, metavar=("DIR", "NAME", "MODELS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("MODELS", "NAME", "VECTORS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        export(Path(args.export[0]), args.export[1], Path(args.export[2]))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], Path(args.measure[2]))))
        return
    import numpy as np

    from vectorize.embedding.build.checkpoint import read_checkpoint_info

    minilm = source_dir(load_manifests(MODELS_DIR)["sentence-transformers/all-MiniLM-L6-v2"])
    maker = ROOT / "bench" / "make_architecture_models.py"
    subprocess.run([str(BENCH_PYTHON), str(maker), str(CHECKPOINTS), str(minilm / "tokenizer.json")], check=True)
    models = {"all-MiniLM-L6-v2 (real weights)": minilm}
    models.update({f"{p.name} (shape)": p for p in sorted(CHECKPOINTS.iterdir()) if (p / "model.safetensors").exists()})
    print(f"CPU: {cpu_description()}; ISA flags: {' '.join(sorted(cpu_flags()))}; {date.today()}")
    print(f"{TEXTS} Debian package descriptions (bench/corpus.py), best of {ROUNDS} rounds, one session per core")
    print(
        f"{'model':38} {'arch':11} {'layers x width':>14} {'weights':>9} {'fp32 texts/s':>12} {'RSS':>8}"
        f" {'int8 texts/s':>12} {'RSS':>8} {'int8 cos':>8}"
    )
    for label, folder in models.items():
        info = read_checkpoint_info(folder)
        with tempfile.TemporaryDirectory() as tmp:
            name = "bench/" + folder.name
            _run("--export", str(folder), name, tmp)
            fp32 = _run("--measure", tmp, name, f"{tmp}/fp32.npy")
            int8 = _run("--measure", tmp, name + "-int8", f"{tmp}/int8.npy")
            a, b = np.load(f"{tmp}/fp32.npy"), np.load(f"{tmp}/int8.npy")
            cosine = f"{float(np.mean((a * b).sum(axis=1))):.4f}" if "real" in label else "n/a"
        shape = f"{info.num_layers} x {info.hidden_size}"
        weights = f"{(folder / 'model.safetensors').stat().st_size / 1e6:.0f} MB"
        print(
            f"{label:38} {info.model_type:11} {shape:>14} {weights:>9} {fp32['texts_per_s']:>12} {fp32['peak_rss_mb']:>5} MB"
            f" {int8['texts_per_s']:>12} {int8['peak_rss_mb']:>5} MB {cosine:>8}",
            flush=True,
        )


if __name__ == "__main__":
    main()
