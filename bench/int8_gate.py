"""The int8 quality gate of tuning, on this CPU or one emulated: `make int8-gate` here,
`make int8-gate-avx2` under qemu-user as a CPU with AVX2 and FMA but no AVX-512 and no VNNI.

Why: int8 numerics differ by ISA. Without VNNI, onnxruntime's u8 x s8 kernel adds pairs of
products in 16 bits with saturation, so a graph that passes the gate on a VNNI machine can fail
it on an AVX2 one (registry.WEIGHT_FORMATS). A developer on one kind of CPU checks the other's
numerics with this; under emulation it is slow (about 4 s a text) and says nothing about speed.

Prints, for every int8 variant the tuner tries, the gate's figures (min and mean cosine to the
fp32 graph on the texts and on their first sentences, top-10 neighbour overlap) and whether it
passes; exits 1 if no variant with every full GEMM int8 passes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorize.embedding.registry import load_manifests
from vectorize.embedding.tuning import Tuner, TuningPlan, TuningStore, cpu_description
from vectorize.paths import MODELS_DIR

INT8_MODEL = "sentence-transformers/all-MiniLM-L6-v2-int8"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=600, help="tuning texts checked (the tuner checks 600)")
    args = parser.parse_args()
    emulated = os.environ.get("QEMU_CPU")
    # Under qemu-user /proc/cpuinfo is the host's: name the emulated model instead.
    cpu = f"qemu-user -cpu {emulated} (emulated; host: {cpu_description()})" if emulated else cpu_description()
    print(f"CPU: {cpu}\ntexts: {args.texts} and their first sentences", flush=True)
    manifest = load_manifests(MODELS_DIR)[INT8_MODEL]
    plan = TuningPlan(budgets=(512,), timing_texts=8, rounds=1, quality_texts=args.texts)
    with tempfile.TemporaryDirectory() as scratch:
        tuner = Tuner(TuningStore([Path(scratch)]), MODELS_DIR, 2, plan=plan)
        folder = tuner.store.writable_folder()
        assert folder is not None
        record = tuner.tune(manifest, folder)
    all_int8_passes = False
    for name, figures in record.figures.items():
        if not name.startswith("int8"):
            continue
        passed = bool(figures["passes_gate"])
        all_int8_passes |= passed and "fp32 kept: none" in name
        print(
            f"{'PASS' if passed else 'fail'}  cos {figures['cosine_min']:.4f}/{figures['cosine_mean']:.5f}"
            f"  short {figures['short_cosine_min']:.4f}/{figures['short_cosine_mean']:.5f}"
            f"  top10 {figures['top10_overlap']:.3f}  {name}",
            flush=True,
        )
    print(f"chosen: {record.settings.describe()}" + ("" if emulated else " (by speed on this CPU)"))
    return 0 if all_int8_passes else 1


if __name__ == "__main__":
    sys.exit(main())
