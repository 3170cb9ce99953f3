"""sentence-transformers on the benchmark texts, every CPU backend it offers; runs in .venv-bench only.

Usage:
  st_reference.py prepare MODEL_DIR WORK_DIR QUANT_CONFIG
      copy the official weights to WORK_DIR/model and build sentence-transformers' own ONNX
      exports there (plain, optimised O1-O3, dynamic int8 with QUANT_CONFIG: avx2, avx512 or
      avx512_vnni), all from the same files, no hub download.
  st_reference.py run WORK_DIR TEXTS_JSON OUT_DIR THREADS BACKEND...
      BACKEND is ``torch`` or ``onnx:<file stem>`` (``onnx:model_O2``); prints one JSON line
      ``{backend: texts_per_second}`` and saves each backend's vectors as OUT_DIR/<backend>.npy.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model, export_optimized_onnx_model

OPTIMISATION_LEVELS = ("O1", "O2", "O3")


def load(model_dir: Path, backend: str, threads: int) -> SentenceTransformer:
    if backend == "torch":
        torch.set_num_threads(threads)
        return SentenceTransformer(str(model_dir), device="cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    stem = backend.split(":", 1)[1]
    return SentenceTransformer(
        str(model_dir),
        device="cpu",
        backend="onnx",
        model_kwargs={"file_name": f"onnx/{stem}.onnx", "provider": "CPUExecutionProvider", "session_options": options},
    )


def prepare(model_dir: Path, work_dir: Path, quant_config: str) -> None:
    target = work_dir / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target)
    model = SentenceTransformer(str(target), device="cpu", backend="onnx")  # exports onnx/model.onnx
    model.save_pretrained(str(target))
    for level in OPTIMISATION_LEVELS:
        export_optimized_onnx_model(model, level, str(target))
    export_dynamic_quantized_onnx_model(model, quant_config, str(target))


def run(work_dir: Path, texts_file: Path, out_dir: Path, threads: int, backends: list[str]) -> None:
    texts = json.loads(texts_file.read_text())
    speeds = {}
    for backend in backends:
        model = load(work_dir / "model", backend, threads)
        model.max_seq_length = 256
        model.encode(texts[:32], batch_size=32)  # warm-up
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
        speeds[backend] = len(texts) / (time.perf_counter() - started)
        np.save(out_dir / f"{backend.replace(':', '_')}.npy", np.asarray(vectors, dtype=np.float32))
    print(json.dumps(speeds))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        run(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), sys.argv[6:])
