"""The int8 quality gate of tuning, on this CPU or on one emulated: `make int8-gate` here,
`make int8-gate-avx2` under qemu-user as a CPU with AVX2 and FMA but no AVX-512 and no VNNI.

Why: int8 numerics differ by ISA. Without VNNI, onnxruntime's u8 x s8 kernel adds pairs of
products in 16 bits with saturation, so a graph that passes the gate on a VNNI machine can fail
it on an AVX2 one (registry.WEIGHT_FORMATS). A developer on one kind of CPU checks the other's
numerics with this.

Two steps, so that only what depends on the ISA runs emulated (emulation is about a thousand
times slower: one ~100-token text takes tens of seconds under qemu-user):
  int8_gate.py build DIR [--texts N]   natively: the fp32 graph, every int8 variant the tuner
                                       tries (graph building does not depend on the CPU), and
                                       the fp32 embeddings of N tuning texts and their first
                                       sentences, the gate's reference
  int8_gate.py check DIR [--all-int8]  wherever the numerics are to be judged: each variant's
                                       embeddings against that reference, the tuner's gate
                                       figures, PASS or fail; exit 1 if no variant with every
                                       full GEMM int8 passes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorize.embedding.build.export import export_checkpoint
from vectorize.embedding.build.quantize import quantize_int8
from vectorize.embedding.build.smoothing import activation_ranges, smooth_graph
from vectorize.embedding.build.tuning import (
    MEAN_COSINE,
    MEAN_COSINE_MARGIN,
    MIN_COSINE,
    MIN_TOP10_OVERLAP,
    TOP10_MARGIN,
    int8_variants,
    load_calibration_texts,
    load_tuning_texts,
    short_texts,
    top_k_overlap,
)
from vectorize.embedding.build.tuning_records import cpu_description
from vectorize.embedding.encoder import Encoder
from vectorize.embedding.manifests import Int8Variant, ModelManifest, export_paths, load_manifests, source_dir
from vectorize.paths import MODELS_DIR

INT8_MODEL = "sentence-transformers/all-MiniLM-L6-v2-int8"


def _encoder(path: Path, manifest: ModelManifest) -> Encoder:
    _, tokenizer = export_paths(manifest, MODELS_DIR)
    # One thread: quality does not depend on it, and under emulation a second thread's spin-waits
    # take the emulated CPU from the one doing the work.
    return Encoder(path, tokenizer, dimension=manifest.dimension, max_tokens=manifest.max_tokens, threads=1)


def build(folder: Path, texts: int) -> None:
    manifest = load_manifests(MODELS_DIR)[INT8_MODEL]
    _, tokenizer = export_paths(manifest, MODELS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "fp32.onnx"
    export_checkpoint(source_dir(manifest), fp32)
    ranges = activation_ranges(fp32, tokenizer, manifest.max_tokens, load_calibration_texts())
    index = []
    for number, variant in enumerate(int8_variants(manifest)):
        source = fp32
        if variant.smooth_alpha is not None:
            source = folder / "smoothed.onnx"
            smooth_graph(fp32, source, ranges, variant.smooth_alpha, variant.outlier_channels)
        quantize_int8(source, folder / f"int8-{number}.onnx", variant.keep_fp32, variant.weights)
        index.append({"graph": f"int8-{number}.onnx", "variant": asdict(variant)})
    chosen = load_tuning_texts()[:texts]
    reference = _encoder(fp32, manifest)
    np.savez(folder / "reference.npz", texts=reference.embed(chosen), shorts=reference.embed(short_texts(chosen)))
    (folder / "index.json").write_text(json.dumps({"texts": chosen, "variants": index}, indent=1))
    print(f"built {len(index)} int8 graphs and the fp32 reference of {texts} texts in {folder}")


def check(folder: Path, all_int8_only: bool) -> int:
    emulated = os.environ.get("QEMU_CPU")
    # Under qemu-user /proc/cpuinfo is the host's: name the emulated model instead.
    cpu = f"qemu-user -cpu {emulated} (emulated, on {cpu_description()})" if emulated else cpu_description()
    manifest = load_manifests(MODELS_DIR)[INT8_MODEL]
    index = json.loads((folder / "index.json").read_text())
    reference = np.load(folder / "reference.npz")
    texts = index["texts"]
    print(f"CPU: {cpu}\n{len(texts)} tuning texts and their first sentences", flush=True)
    k = min(10, len(texts) - 1)
    all_int8_passes = False
    for entry in index["variants"]:
        variant = Int8Variant(**{**entry["variant"], "keep_fp32": tuple(entry["variant"]["keep_fp32"])})
        every_gemm_int8 = not variant.keep_fp32
        if all_int8_only and not every_gemm_int8:
            continue
        encoder = _encoder(folder / entry["graph"], manifest)
        vectors, shorts = encoder.embed(texts), encoder.embed(short_texts(texts))
        cosine = (vectors * reference["texts"]).sum(axis=1)
        short_cosine = (shorts * reference["shorts"]).sum(axis=1)
        overlap = top_k_overlap(reference["texts"], vectors, k)
        passed = (
            min(cosine.min(), short_cosine.min()) >= MIN_COSINE
            and min(cosine.mean(), short_cosine.mean()) >= MEAN_COSINE + MEAN_COSINE_MARGIN
            and overlap >= MIN_TOP10_OVERLAP + TOP10_MARGIN
        )
        all_int8_passes |= passed and every_gemm_int8
        print(
            f"{'PASS' if passed else 'fail'}  cos {cosine.min():.4f}/{cosine.mean():.5f}"
            f"  short {short_cosine.min():.4f}/{short_cosine.mean():.5f}  top{k} {overlap:.3f}  int8{variant.describe()}",
            flush=True,
        )
    return 0 if all_int8_passes else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "check"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--texts", type=int, default=600, help="tuning texts checked (build; the tuner checks 600)")
    parser.add_argument("--all-int8", action="store_true", help="check only the variants with every full GEMM int8")
    args = parser.parse_args()
    if args.step == "build":
        build(args.folder, args.texts)
        return 0
    return check(args.folder, args.all_int8)


if __name__ == "__main__":
    sys.exit(main())
