"""Smoothing before int8 quantisation (SmoothQuant, Xiao et al. 2023), for the tuning step.

Why: dynamic int8 quantises each GEMM's activations with one scale for the whole tensor, and a
few channels of a transformer's activations are tens of times larger than the rest; they set
the scale, and every other channel loses its precision. That is why quantising every layer of
all-MiniLM-L6-v2 misses the quality gate (measured on 2,000 real texts: mean cosine 0.9953,
top-10 overlap 0.898). Dividing each input channel by s_j and multiplying the same row of the
weights by s_j leaves the product unchanged in exact arithmetic but moves the outliers into the
weights, which are quantised per output channel and mind them far less. With
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and alpha 0.7, the same all-int8 graph measured
0.9972 / 0.923 (alpha 0.5: 0.987 / 0.848; 0.9: 0.9957 / 0.911), for ~3% of its speed: the
division is one Mul per GEMM input, elementwise.

Short texts (a search query's length) are harder: there every GEMM int8 measured 0.9942 mean
cosine on the 56 short reference texts, outside the gate at any alpha from 0.5 to 0.9; one GEMM
is to blame, layer 0's second feed-forward one. Kept in fp32 beside smoothing, it gives 0.9972
there and 0.9985 / top-10 0.943 on 2,000 longer texts, better than keeping all six in fp32 without
smoothing (the previous choice), at nearly the all-int8 speed. The manifest names such variants
(``tune_smoothing``); tuning measures and gates them like any other.

The inputs of the fused QKV projection (Attention) and of both feed-forward GEMMs are smoothed;
the attention output projection is not (smoothing it bought no quality in the same measurement).
The ranges come from the fp32 graph run over calibration texts (padding excluded).

Outlier channels in fp32 (LLM.int8()-style decomposition, Dettmers et al. 2022), for the second
feed-forward GEMMs: their input, the GELU output, has one or two channels far above the rest
(layer 0: 24.5 against at most 6.0 over the calibration texts). Smoothing scales such a channel's
weight row up, and a row that large then sets its output columns' weight scales; that is why
layer 0's GEMM had to stay fp32. With ``outlier_channels`` = k, those GEMMs are not smoothed but
split: the k channels with the largest range are multiplied in fp32 (a K = k GEMM, next to free),
the other channels go through the int8 GEMM. The split costs no pass over the activations: the
outlier channels are taken out of the int8 input by giving them a bias of -10,000 in the GELU
(whose output is then exactly 0) and recomputed from the first GEMM's output beside it, and their
weight rows are zeroed. Measured on all-MiniLM-L6-v2 (600 tuning texts / their first sentences,
mean cosine to fp32, top-10 overlap): alpha 0.7 with layer 0's GEMM in fp32 0.99837 / 0.99815 /
0.944; every GEMM int8, alpha 0.7 on the QKV and first feed-forward inputs, two outlier channels in
fp32 on the second: 0.99903 / 0.99879 / 0.957, and 7.5% faster on one core (no fp32 GEMM left, six
elementwise passes over 1536 channels fewer)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from vectorize.embedding.encoder import load_tokenizer

if TYPE_CHECKING:
    import onnx

#: Names of the encoder layers' nodes (export.py names them so).
ENCODER_NODE = re.compile(r"^l\d+_")
#: Calibration texts per call (padded to the longest of them).
CALIBRATION_BATCH = 16
#: Bounds of a channel's smoothing factor: a dead channel must not divide by ~0.
MIN_FACTOR, MAX_FACTOR = 1e-2, 1e2
#: Names of the nodes that multiply outlier channels in fp32 end with this; quantisation skips them.
OUTLIER_SUFFIX = "_outliers"
#: GELU bias that silences a channel in the int8 path: GELU(x - 10,000) is exactly 0 in fp32.
SILENCING_BIAS = -1e4


def _smoothable(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The encoder layers' GEMMs (names ``l<layer>_…``; not a Dense layer after pooling, whose
    input has no token axis) with constant weights, whose input is not an attention output."""
    weights = {init.name for init in graph.initializer}
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return [
        node
        for node in graph.node
        if node.op_type in ("MatMul", "Attention")
        and ENCODER_NODE.match(node.name)
        and len(node.input) > 1
        and node.input[1] in weights
        and producers.get(node.input[0]) != "Attention"
    ]


def activation_ranges(fp32_path: Path, tokenizer_path: Path, max_tokens: int, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per input channel, the largest |activation| each smoothable GEMM sees over ``texts``."""
    import onnx

    model = onnx.load(str(fp32_path))
    names = sorted({node.input[0] for node in _smoothable(model.graph)})
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"]
    )
    tokenizer = load_tokenizer(tokenizer_path, max_tokens)
    ranges: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), CALIBRATION_BATCH):
        encodings = tokenizer.encode_batch(list(texts[start : start + CALIBRATION_BATCH]), add_special_tokens=True)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        for name, values in zip(names, session.run(names, {"input_ids": ids, "attention_mask": mask}), strict=True):
            peak = np.abs(values[mask.astype(bool)]).max(axis=0)
            ranges[name] = peak if name not in ranges else np.maximum(ranges[name], peak)
    return ranges


def smooth_graph(fp32_path: Path, out_path: Path, ranges: dict[str, np.ndarray], alpha: float, outlier_channels: int = 0) -> None:
    """Write ``fp32_path`` with every smoothable GEMM's input divided and its weight rows
    multiplied by the channel factors -- the same function, easier to quantise -- and, with
    ``outlier_channels``, each second feed-forward GEMM split into fp32 outliers and the rest."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in _smoothable(graph):
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        peak = np.maximum(ranges[node.input[0]].astype(np.float32), 1e-5)
        gelu = producers.get(node.input[0])
        if outlier_channels and gelu is not None and gelu.op_type == "BiasGelu":
            _split_outliers(graph, initializers, gelu, node, weight, np.argsort(-peak)[:outlier_channels])
            continue
        factors = np.power(peak, alpha) / np.power(np.maximum(np.abs(weight).max(axis=1), 1e-5), 1 - alpha)
        factors = np.clip(factors, MIN_FACTOR, MAX_FACTOR).astype(np.float32)
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * factors[:, None], node.input[1]))
        inverse = numpy_helper.from_array((1.0 / factors).astype(np.float32), f"{node.name}_smooth_inverse")
        graph.initializer.append(inverse)
        smoothed = f"{node.name}_smoothed"
        divide = onnx.helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=f"{node.name}_smooth")
        graph.node.insert(list(graph.node).index(node), divide)
        node.input[0] = smoothed
    tmp = out_path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out_path)


def _split_outliers(
    graph: onnx.GraphProto,
    initializers: dict[str, onnx.TensorProto],
    gelu: onnx.NodeProto,
    gemm: onnx.NodeProto,
    weight: np.ndarray,
    channels: np.ndarray,
) -> None:
    """``gemm(gelu(h + b))`` as ``gemm'(gelu(h + b'))`` + ``gelu(h[:, c] + b[c]) @ W[c]``, where b' silences
    the channels c and W' has their rows zeroed: the first term is quantised, the second stays fp32."""
    from onnx import helper, numpy_helper

    bias = numpy_helper.to_array(initializers[gelu.input[1]]).astype(np.float32)
    outlier_bias = bias[channels].copy()
    bias[channels] = SILENCING_BIAS
    initializers[gelu.input[1]].CopyFrom(numpy_helper.from_array(bias, gelu.input[1]))
    outlier_weight = weight[channels].copy()
    weight[channels] = 0.0
    initializers[gemm.input[1]].CopyFrom(numpy_helper.from_array(weight, gemm.input[1]))
    prefix = f"{gemm.name}_outlier"
    for part, value in (("channels", channels.astype(np.int64)), ("bias", outlier_bias), ("weight", outlier_weight)):
        graph.initializer.append(numpy_helper.from_array(value, f"{prefix}_{part}"))
    total = gemm.output[0]
    gemm.output[0] = f"{gemm.name}_int8_part"
    nodes = [
        helper.make_node("Gather", [gelu.input[0], f"{prefix}_channels"], [f"{prefix}_in"], name=f"{prefix}_gather", axis=-1),
        helper.make_node(
            "BiasGelu", [f"{prefix}_in", f"{prefix}_bias"], [f"{prefix}_x"], name=f"{prefix}_gelu", domain="com.microsoft"
        ),
        helper.make_node("MatMul", [f"{prefix}_x", f"{prefix}_weight"], [f"{prefix}_y"], name=gemm.name + OUTLIER_SUFFIX),
        helper.make_node("Add", [gemm.output[0], f"{prefix}_y"], [total], name=f"{prefix}_add"),
    ]
    position = list(graph.node).index(gemm) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
