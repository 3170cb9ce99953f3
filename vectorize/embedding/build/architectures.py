"""The encoder architectures the exporter builds, each read into one canonical form.

Why one form: BERT, RoBERTa/XLM-RoBERTa, MPNet and DistilBERT are the same post-LayerNorm
transformer under different tensor names. They differ in only three places, each written
here once: where position numbers start (RoBERTa and MPNet count from ``pad_token_id + 1``),
whether a token-type row is added (folded into the position table), and MPNet's relative
position bias (a learned value per head and distance bucket, added to every layer's attention
scores). The graph (export.py) is written once, from ``EncoderWeights``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Linear = tuple[np.ndarray, np.ndarray]  # torch layout: weight (out, in), bias (out,)
Norm = tuple[np.ndarray, np.ndarray]  # gamma, beta


@dataclass(frozen=True)
class Shape:
    """What a checkpoint's config.json says about its size."""

    hidden_size: int
    num_heads: int
    num_layers: int
    layer_norm_eps: float
    #: Tokens the position table can number (after RoBERTa's offset).
    max_positions: int


@dataclass(frozen=True)
class EncoderLayer:
    qkv: Linear  # query, key and value projections packed as one (3 × hidden, hidden)
    attention_out: Linear
    attention_norm: Norm
    ff_in: Linear
    ff_out: Linear
    output_norm: Norm


@dataclass(frozen=True)
class EncoderWeights:
    word: np.ndarray
    #: Row i is added to the i-th token (offset and token type 0 already applied).
    positions: np.ndarray
    embedding_norm: Norm
    layers: list[EncoderLayer]
    #: MPNet: the learned bias by (bucket, head), and each (query, key) position pair's bucket.
    relative_bias: np.ndarray | None = None
    relative_buckets: np.ndarray | None = None


@dataclass(frozen=True)
class Architecture:
    label: str
    #: Prefixes of a whole-model checkpoint's tensor names (``bert.embeddings.…``).
    prefixes: tuple[str, ...]
    shape: Callable[[dict[str, Any]], Shape]
    weights: Callable[[dict[str, np.ndarray], dict[str, Any]], EncoderWeights]


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _linear(w: dict[str, np.ndarray], name: str) -> Linear:
    return _f32(w[name + ".weight"]), _f32(w[name + ".bias"])


def _packed(w: dict[str, np.ndarray], names: list[str]) -> Linear:
    parts = [_linear(w, n) for n in names]
    return np.concatenate([p[0] for p in parts], axis=0), np.concatenate([p[1] for p in parts])


def _position_offset(config: dict[str, Any]) -> int:
    """RoBERTa-style models number real tokens from ``pad_token_id + 1`` (fairseq's make_positions)."""
    return int(config.get("pad_token_id", 1)) + 1


def _positions(w: dict[str, np.ndarray], offset: int) -> np.ndarray:
    table = _f32(w["embeddings.position_embeddings.weight"])[offset:]
    if "embeddings.token_type_embeddings.weight" in w:  # single sentences are all type 0
        table = table + _f32(w["embeddings.token_type_embeddings.weight"][0])
    return table


def _bert_shape(config: dict[str, Any], offset: int = 0) -> Shape:
    return Shape(
        hidden_size=int(config["hidden_size"]),
        num_heads=int(config["num_attention_heads"]),
        num_layers=int(config["num_hidden_layers"]),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        max_positions=int(config.get("max_position_embeddings", 512)) - offset,
    )


@dataclass(frozen=True)
class _LayerNames:
    """Where an architecture keeps each part of layer ``i`` (``prefix`` holds ``{i}``)."""

    prefix: str
    qkv: tuple[str, str, str]
    attention_out: str
    attention_norm: str
    ff_in: str
    ff_out: str
    output_norm: str

    def read(self, w: dict[str, np.ndarray], count: int) -> list[EncoderLayer]:
        layers = []
        for i in range(count):
            p = self.prefix.format(i=i)
            layers.append(
                EncoderLayer(
                    qkv=_packed(w, [p + n for n in self.qkv]),
                    attention_out=_linear(w, p + self.attention_out),
                    attention_norm=_linear(w, p + self.attention_norm),
                    ff_in=_linear(w, p + self.ff_in),
                    ff_out=_linear(w, p + self.ff_out),
                    output_norm=_linear(w, p + self.output_norm),
                )
            )
        return layers


_BERT_LAYER = _LayerNames(
    "encoder.layer.{i}.",
    ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
_MPNET_LAYER = _LayerNames(
    "encoder.layer.{i}.",
    ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
    "attention.attn.o",
    "attention.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
_DISTILBERT_LAYER = _LayerNames(
    "transformer.layer.{i}.",
    ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
    "attention.out_lin",
    "sa_layer_norm",
    "ffn.lin1",
    "ffn.lin2",
    "output_layer_norm",
)


def _encoder(w: dict[str, np.ndarray], layers: list[EncoderLayer], offset: int, **bias: np.ndarray) -> EncoderWeights:
    return EncoderWeights(
        word=_f32(w["embeddings.word_embeddings.weight"]),
        positions=_positions(w, offset),
        embedding_norm=_linear(w, "embeddings.LayerNorm"),
        layers=layers,
        **bias,
    )


def _bert_weights(w: dict[str, np.ndarray], config: dict[str, Any], offset: int = 0) -> EncoderWeights:
    return _encoder(w, _BERT_LAYER.read(w, int(config["num_hidden_layers"])), offset)


def _roberta_shape(config: dict[str, Any]) -> Shape:
    return _bert_shape(config, _position_offset(config))


def _roberta_weights(w: dict[str, np.ndarray], config: dict[str, Any]) -> EncoderWeights:
    return _bert_weights(w, config, _position_offset(config))


def relative_position_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's bucket of every (query, key) position pair (transformers' relative_position_bucket,
    in its float32 arithmetic): exact distances up to a quarter of the buckets, logarithmic
    beyond, one half of the buckets for each direction."""
    positions = np.arange(length)
    n = -(positions[None, :] - positions[:, None])
    half = num_buckets // 2
    buckets = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    distance = np.maximum(n, max_exact).astype(np.float32)  # the log is used only from max_exact on
    scaled = np.log(distance / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (scaled * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


def _mpnet_weights(w: dict[str, np.ndarray], config: dict[str, Any]) -> EncoderWeights:
    shape = _roberta_shape(config)
    buckets = relative_position_buckets(shape.max_positions, int(config.get("relative_attention_num_buckets", 32)))
    layers = _MPNET_LAYER.read(w, shape.num_layers)
    bias = _f32(w["encoder.relative_attention_bias.weight"])
    return _encoder(w, layers, _position_offset(config), relative_bias=bias, relative_buckets=buckets)


def _distilbert_shape(config: dict[str, Any]) -> Shape:
    return Shape(
        hidden_size=int(config["dim"]),
        num_heads=int(config["n_heads"]),
        num_layers=int(config["n_layers"]),
        layer_norm_eps=1e-12,  # fixed in DistilBERT's code, not in its config
        max_positions=int(config.get("max_position_embeddings", 512)),
    )


def _distilbert_weights(w: dict[str, np.ndarray], config: dict[str, Any]) -> EncoderWeights:
    return _encoder(w, _DISTILBERT_LAYER.read(w, int(config["n_layers"])), 0)


#: By config.json's ``model_type``.
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("BERT (MiniLM, bge, e5, gte, arctic-embed, multi-qa)", ("bert.",), _bert_shape, _bert_weights),
    "roberta": Architecture("RoBERTa", ("roberta.",), _roberta_shape, _roberta_weights),
    "xlm-roberta": Architecture(
        "XLM-RoBERTa (multilingual-e5, paraphrase-multilingual-mpnet)", ("roberta.",), _roberta_shape, _roberta_weights
    ),
    "mpnet": Architecture("MPNet (all-mpnet-base-v2, multi-qa-mpnet)", ("mpnet.",), _roberta_shape, _mpnet_weights),
    "distilbert": Architecture("DistilBERT (msmarco-distilbert)", ("distilbert.",), _distilbert_shape, _distilbert_weights),
}
#: For error messages: what the exporter builds.
SUPPORTED = ", ".join(a.label for a in ARCHITECTURES.values())


class UnsupportedArchitecture(ValueError):
    """A model_type the exporter does not build; the message lists the ones it does."""


def architecture(config: dict[str, Any]) -> Architecture:
    """The config's architecture (a checkpoint without ``model_type`` is taken as BERT); a
    ValueError that names it and lists the supported ones otherwise, or for an activation
    other than exact GELU."""
    kind = config.get("model_type") or "bert"
    if kind not in ARCHITECTURES:
        raise UnsupportedArchitecture(f"model_type {kind!r} is not supported; supported: {SUPPORTED}")
    activation = config.get("hidden_act", config.get("activation", "gelu"))
    if activation != "gelu":
        raise ValueError(f"hidden_act {activation!r} is not supported (need gelu)")
    return ARCHITECTURES[kind]


def strip_prefix(weights: dict[str, np.ndarray], arch: Architecture) -> dict[str, np.ndarray]:
    """Accept both bare (``embeddings.…``) and whole-model (``bert.embeddings.…``) checkpoints."""
    if any(k.startswith("embeddings.") for k in weights):
        return weights
    for prefix in (*arch.prefixes, "model."):
        if any(k.startswith(prefix + "embeddings.") for k in weights):
            return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    raise ValueError("checkpoint has no embeddings.* tensors")
