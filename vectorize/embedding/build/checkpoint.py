"""What a sentence-transformers directory declares, read from its configuration files alone.

sentence-transformers runs a model as a list of modules (modules.json): the transformer, then
pooling, then any Dense layers, then optionally normalisation; its prompts and window live in
two more files. Reading them here, without weights, lets a hub model be checked (and refused
with a reason) before anything large is downloaded, and gives the exporter the exact recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vectorize.embedding.build.architectures import architecture

#: Pooling modes, by the names sentence-transformers writes (``pooling_mode`` or its older booleans).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: Dense activations by the name sentence-transformers saves, as ONNX operators ("" = none).
DENSE_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": "Tanh",
    "torch.nn.modules.linear.Identity": "",
    "torch.nn.modules.activation.ReLU": "Relu",
    "torch.nn.modules.activation.Sigmoid": "Sigmoid",
}


@dataclass(frozen=True)
class DenseLayer:
    """A Dense module after pooling: its folder (weights in ``model.safetensors`` there)."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What the exporter learns from a sentence-transformers directory."""

    model_type: str
    hidden_size: int
    num_heads: int
    num_layers: int
    layer_norm_eps: float
    max_tokens: int
    #: Pooling modes in the order their vectors are concatenated.
    pooling_modes: tuple[str, ...]
    normalize: bool
    dense: tuple[DenseLayer, ...] = ()
    #: Text put before each input, as sentence-transformers does: by kind ("query", "document").
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def pooling(self) -> str:
        """The pooling modes as one word for manifests and messages: ``mean``, ``cls+max``."""
        return "+".join(self.pooling_modes)

    @property
    def dimension(self) -> int:
        """Length of the sentence embedding: the last Dense layer's, else pooling's."""
        return self.dense[-1].out_features if self.dense else self.hidden_size * len(self.pooling_modes)


def read_checkpoint_info(model_dir: Path) -> CheckpointInfo:
    """Read the architecture and the modules a sentence-transformers directory declares; a
    ValueError naming what is not supported otherwise."""
    config = json.loads((model_dir / "config.json").read_text())
    arch = architecture(config)
    shape = arch.shape(config)
    pooling_modes: tuple[str, ...] = ("mean",)
    normalize = False
    dense: list[DenseLayer] = []
    modules_file = model_dir / "modules.json"
    if modules_file.exists():
        for module in json.loads(modules_file.read_text()):
            kind = module.get("type", "").rsplit(".", 1)[-1]
            module_dir = model_dir / module.get("path", "")
            if kind == "Pooling":
                pooling_modes = _pooling_modes(json.loads((module_dir / "config.json").read_text()))
            elif kind == "Dense":
                dense.append(_dense(module.get("path", ""), json.loads((module_dir / "config.json").read_text())))
            elif kind == "Normalize":
                normalize = True
            elif kind not in ("Transformer", ""):
                raise ValueError(f"sentence-transformers module {kind!r} is not supported (Pooling, Dense, Normalize are)")
    max_tokens = shape.max_positions
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.exists():
        declared = json.loads(st_config.read_text())
        if declared.get("do_lower_case"):
            raise ValueError("sentence_bert_config.json's do_lower_case is not supported")
        max_tokens = min(max_tokens, int(declared.get("max_seq_length") or max_tokens))
    return CheckpointInfo(
        model_type=config.get("model_type") or "bert",
        hidden_size=shape.hidden_size,
        num_heads=shape.num_heads,
        num_layers=shape.num_layers,
        layer_norm_eps=shape.layer_norm_eps,
        max_tokens=max_tokens,
        pooling_modes=pooling_modes,
        normalize=normalize,
        dense=tuple(dense),
        prompts=_prompts(model_dir / "config_sentence_transformers.json"),
    )


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    declared = config.get("pooling_mode")
    if declared is None:
        modes = tuple(mode for key, mode in _LEGACY_POOLING.items() if config.get(key))
    else:
        modes = (declared,) if isinstance(declared, str) else tuple(declared)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise ValueError(f"pooling {unknown or 'none'} is not supported; supported: {', '.join(POOLING_MODES)}")
    if config.get("include_prompt") is False:
        raise ValueError("pooling that leaves the prompt out (include_prompt: false) is not supported")
    return modes


def _dense(path: str, config: dict[str, Any]) -> DenseLayer:
    name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if name not in DENSE_ACTIVATIONS:
        raise ValueError(f"Dense activation {name!r} is not supported; supported: {', '.join(DENSE_ACTIVATIONS)}")
    return DenseLayer(
        path=path,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=DENSE_ACTIVATIONS[name],
    )


def _prompts(path: Path) -> dict[str, str]:
    """The prompts sentence-transformers puts before queries and documents: its encode_query uses
    the one named "query", its encode_document "document" (else "passage", else "corpus"); either,
    when missing, the default_prompt_name's."""
    if not path.exists():
        return {}
    config = json.loads(path.read_text())
    named: dict[str, str] = config.get("prompts") or {}
    default = named.get(config.get("default_prompt_name") or "", "")
    document = next((named[k] for k in ("document", "passage", "corpus") if k in named), default)
    return {kind: text for kind, text in (("query", named.get("query", default)), ("document", document)) if text}


def weight_files(info: CheckpointInfo) -> list[str]:
    """The Dense layers' weight files, relative to the model directory (the encoder's is
    ``model.safetensors``)."""
    return [f"{layer.path}/model.safetensors" for layer in info.dense]
