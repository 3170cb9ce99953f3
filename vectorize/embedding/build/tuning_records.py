"""What tuning keeps: each model's engine settings per CPU (the CPU named by its model and ISA
flags, so another machine tunes anew), in ``records.json`` beside the graphs they chose."""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnxruntime as ort

from vectorize.embedding.encoder import DEFAULT_TOKEN_BUDGET
from vectorize.embedding.manifests import Int8Variant

#: The ISA features that decide which kernels onnxruntime runs.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
RECORDS = "records.json"


@dataclass(frozen=True)
class EngineSettings:
    """How one model runs on this machine."""

    sessions: int
    threads_per_session: int
    token_budget: int
    #: int8 only: node-name prefixes kept in fp32; None = the manifest's own list.
    keep_fp32: tuple[str, ...] | None = None
    #: int8 only: SmoothQuant migration strength the graph was smoothed with before quantising.
    smooth_alpha: float | None = None
    #: int8 only: outlier channels of each second feed-forward GEMM multiplied in fp32.
    outlier_channels: int = 0
    #: int8 only: how the GEMM weights are stored (quantize.WEIGHT_FORMATS).
    weights: str = "s8"

    @property
    def variant(self) -> Int8Variant | None:
        """The int8 graph these settings run; None: the manifest's own export."""
        if self.keep_fp32 is None:
            return None
        return Int8Variant(self.keep_fp32, self.smooth_alpha, self.outlier_channels, self.weights)

    def describe(self) -> str:
        layout = f"{self.sessions} session{'s' if self.sessions > 1 else ''} x {self.threads_per_session} thread"
        variant = "" if self.variant is None else self.variant.describe()
        return f"{layout}, {self.token_budget} tokens/call{variant}"


def default_settings(cores: int) -> EngineSettings:
    """What runs when tuning is off and nothing was measured: one single-threaded session per core."""
    return EngineSettings(sessions=cores, threads_per_session=1, token_budget=DEFAULT_TOKEN_BUDGET)


def _cpuinfo() -> tuple[str, set[str]]:
    """The first CPU's model name and feature flags (the machine's architecture where unknown)."""
    model, flags = platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == platform.machine():
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_flags() -> set[str]:
    return _cpuinfo()[1]


def cpu_description() -> str:
    """The CPU's model and the ISA features that decide which kernels run: every figure differs by them."""
    model, flags = _cpuinfo()
    return f"{model} [{' '.join(f for f in ISA_FLAGS if f in flags) or 'no AVX2'}]"


def cpu_identity(cores: int) -> str:
    """What a stored choice is valid for: the CPU model, its ISA, the cores used, the runtime."""
    return f"{cpu_description()} x{cores} cores, onnxruntime {ort.__version__}"


@dataclass
class TuningRecord:
    cpu: str
    settings: EngineSettings
    #: texts/s and quality of every candidate, to show why this one won.
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    tuned_at: str = ""
    #: the int8 graph the settings name, relative to the store's folder (None: the manifest's export).
    graph: str | None = None
    #: the model export this was measured on: new weights or another exporter tune anew.
    fingerprint: str = ""


class TuningStore:
    """Records per model and CPU identity: read from every folder given, written to the first writable one."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = [f / "tuned" for f in folders]

    def _read(self, folder: Path) -> dict:
        try:
            return json.loads((folder / RECORDS).read_text())
        except (OSError, ValueError):
            return {}

    def find(self, model: str, cpu: str, fingerprint: str) -> tuple[TuningRecord, Path] | None:
        """The record for this model's export on this CPU, and the folder it lives in."""
        for folder in self.folders:
            data = self._read(folder).get(model, {}).get(cpu)
            if data is None or data.get("fingerprint") != fingerprint:
                continue
            settings = data["settings"]
            keep = settings.get("keep_fp32")
            alpha = settings.get("smooth_alpha")
            outliers = settings.get("outlier_channels", 0)
            record = TuningRecord(
                cpu=cpu,
                settings=EngineSettings(
                    sessions=int(settings["sessions"]),
                    threads_per_session=int(settings["threads_per_session"]),
                    token_budget=int(settings["token_budget"]),
                    keep_fp32=None if keep is None else tuple(keep),
                    smooth_alpha=None if alpha is None else float(alpha),
                    outlier_channels=int(outliers),
                    weights=str(settings.get("weights", "s8")),
                ),
                figures=data.get("figures", {}),
                tuned_at=data.get("tuned_at", ""),
                graph=data.get("graph"),
                fingerprint=fingerprint,
            )
            if record.graph is None or (folder / record.graph).exists():
                return record, folder
        return None

    def writable_folder(self) -> Path | None:
        for folder in self.folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if os.access(folder, os.W_OK):
                return folder
        return None

    @contextmanager
    def lock(self, folder: Path) -> Iterator[None]:
        """One tuning at a time per store: two processes timing at once would halve each other's figures."""
        with (folder / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def save(self, folder: Path, model: str, record: TuningRecord) -> None:
        data = self._read(folder)
        data.setdefault(model, {})[record.cpu] = {
            "settings": asdict(record.settings),
            "figures": record.figures,
            "tuned_at": record.tuned_at,
            "graph": record.graph,
            "fingerprint": record.fingerprint,
        }
        tmp = folder / (RECORDS + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(folder / RECORDS)
        self._remove_unused_graphs(folder, data)

    @staticmethod
    def _remove_unused_graphs(folder: Path, data: dict) -> None:
        """A graph no record names any more (its CPU re-tuned to another) is ~60 MB of nothing."""
        named = {record.get("graph") for per_cpu in data.values() for record in per_cpu.values()}
        for graph in folder.glob("*/model-*.onnx"):
            if str(graph.relative_to(folder)) not in named:
                graph.unlink(missing_ok=True)
