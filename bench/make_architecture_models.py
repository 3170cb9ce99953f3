"""Random-weight checkpoints shaped like one popular model of each architecture, for
bench/architectures.py (runs in .venv-bench, where transformers and PyTorch live).

Speed and memory depend on a model's shape (layers, width, vocabulary), not on its trained
weights, and the hub cannot be reached from every machine that benchmarks; so each checkpoint
is its namesake's configuration with random weights, saved as a sentence-transformers folder
(mean pooling, normalised) with all-MiniLM-L6-v2's tokenizer: every model then reads the same
token ids (all below each vocabulary's size), so the figures compare architectures, not
tokenizers.

Usage: .venv-bench/bin/python bench/make_architecture_models.py OUT_DIR MINILM_TOKENIZER_JSON
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig, DistilBertConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig

#: name -> the namesake's configuration (from its config.json on the hub).
SHAPES = {
    "bge-small-en-v1.5": BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
    "all-mpnet-base-v2": MPNetConfig(
        vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "multilingual-e5-small": XLMRobertaConfig(
        vocab_size=250037,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-12,
    ),
    "all-distilroberta-v1": RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    ),
    "msmarco-distilbert-base-v4": DistilBertConfig(dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
}
MAX_TOKENS = 256


def make(out: Path, name: str, tokenizer: Path) -> None:
    folder = out / name
    if (folder / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    config = SHAPES[name]
    AutoModel.from_config(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(tokenizer, folder / "tokenizer.json")
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    width = getattr(config, "hidden_size", None) or config.dim
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": width, "pooling_mode": "mean"}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_TOKENS, "do_lower_case": False}))
    print(f"{name}: {sum(p.numel() for p in AutoModel.from_config(config).parameters()) / 1e6:.0f}M parameters", file=sys.stderr)


if __name__ == "__main__":
    out_dir, minilm_tokenizer = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    for model_name in SHAPES:
        make(out_dir, model_name, minilm_tokenizer)
