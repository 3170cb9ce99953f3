"""int8 graphs from an fp32 one: onnxruntime's dynamic quantisation, with the layers a variant keeps
in fp32 and the weight format it asks for (tuning.py builds and gates each candidate)."""

from __future__ import annotations

import logging
from pathlib import Path

from vectorize.embedding.build.smoothing import OUTLIER_SUFFIX

#: How int8 GEMM weights are stored, and why each exists. onnxruntime multiplies uint8
#: activations by int8 weights; with VNNI (``vpdpbusd``) it sums the products in 32 bits, exactly.
#: Without VNNI (AVX2, AVX-512 before Cascade Lake) it adds pairs of products in 16 bits with
#: saturation (``vpmaddubsw``): 255 x 127 x 2 overflows, so weights using the full int8 range lose
#: whole products there -- the same graph measured mean cosine 0.98385 on an AVX2 EPYC against
#: 0.99911 on a VNNI Xeon. Seven-bit weights (``s7``, onnxruntime's ``reduce_range``) cannot
#: overflow (255 x 64 x 2 < 2^15) and run the same fast kernel; uint8 weights (``u8``) take
#: onnxruntime's U8U8 kernels, which widen to 16 bits first (exact everywhere, slower where
#: measured). Tuning measures each and keeps the fastest inside the quality gate.
WEIGHT_FORMATS = {"s8": "int8 weights", "s7": "7-bit weights", "u8": "uint8 weights"}


def check_weight_format(weights: str) -> None:
    """Refuse a weight format that is not one of WEIGHT_FORMATS (a manifest's typo, say)."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"int8 weight format {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")


def quantize_int8(fp32_path: Path, out_path: Path, keep_fp32: tuple[str, ...], weights: str = "s8") -> None:
    """Dynamic int8 with per-channel weight scales, including the packed QKV projection inside
    each fused Attention (QAttention: +15-20% texts/s over quantising the MatMuls alone). Kept in
    fp32: attention-score MatMuls (no weights) and the nodes whose names start with one of
    ``keep_fp32`` -- the layers measured most sensitive (bench/ and the manifest say which) --
    and the outlier channels a smoothed graph multiplies apart (smoothing.py). ``weights`` is one
    of ``WEIGHT_FORMATS``."""
    import onnx

    check_weight_format(weights)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    exclude = [
        node.name
        for node in graph.node
        if (node.op_type == "MatMul" and not any(i in constants for i in node.input))
        or node.name.startswith(keep_fp32)
        or node.name.endswith(OUTLIER_SUFFIX)
    ]
    tmp = out_path.with_suffix(".tmp")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs every tensor to the root logger
    try:
        _quantize(fp32_path, tmp, exclude, weights)
    finally:
        logging.disable(previous)
    tmp.replace(out_path)


def _quantize(fp32_path: Path, tmp: Path, exclude: list[str], weights: str) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(tmp),
        weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
        reduce_range=weights == "s7",
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        nodes_to_exclude=exclude,
        # Types of tensors produced by onnxruntime's fused operators, which shape inference cannot see.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
