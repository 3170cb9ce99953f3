"""Run sentence-transformers (PyTorch CPU) on the benchmark texts; executed in .venv-bench only.

Usage: st_reference.py MODEL_DIR TEXTS_JSON OUT_NPY THREADS
Prints one line: texts_per_second.
"""

import json
import sys
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

model_dir, texts_file, out_file, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
texts = json.loads(open(texts_file).read())
model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = 256
model.encode(texts[:32], batch_size=32)  # warm-up
started = time.perf_counter()
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
elapsed = time.perf_counter() - started
np.save(out_file, vectors.astype(np.float32))
print(f"{len(texts) / elapsed:.3f}")
