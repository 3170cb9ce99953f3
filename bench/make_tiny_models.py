"""Make the tiny random-weight sentence-transformers checkpoints the exporter is tested on, with
sentence-transformers' own embeddings of them (``make tiny-models``; runs in .venv-bench, where
PyTorch lives).

One checkpoint per architecture and pooling kind, each small enough to commit (hidden size 32,
two layers, a tokenizer trained here on a few multilingual sentences): what the test compares is
the arithmetic -- position offsets, relative position bias, pooling, Dense layers, prompts,
truncation -- which random weights exercise as well as trained ones. Weights are drawn wider
than transformers' default (std 0.2, not 0.02), so that a wrong position or a dropped token
moves the embedding far more than the test's tolerance.

Writes ``tests/fixtures/tiny_models/<name>/`` (the sentence-transformers folder and
``reference.json``: texts, and their document and query embeddings).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer, models
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE, Unigram, WordPiece
from transformers import (
    AutoModel,
    BertConfig,
    DistilBertConfig,
    MPNetConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_models"
MAX_TOKENS = 64
HIDDEN = 32

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "PostgreSQL keeps every row versioned; vacuum removes the dead ones.",
    "Embeddings turn sentences into vectors, and similar sentences land close together.",
    "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
    "Die Häuser stehen in der Straße, und die Kinder spielen draußen.",
    "Быстрая коричневая лиса прыгает через ленивую собаку у реки.",
    "База данных хранит каждую строку и индекс для быстрого поиска.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "素早い茶色の狐が怠け者の犬を飛び越える。データベースは行を保存する。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول بجانب النهر.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "query: passage: Represent this sentence for searching relevant passages:",
]
TEXTS = [
    "The fox jumps over the dog.",
    "vacuum removes dead rows from the table",
    "Die Kinder spielen in der Straße.",
    "Лиса прыгает через собаку.",
    "Η αλεπού πηδά.",
    "素早い狐が犬を飛び越える。",
    "الثعلب يقفز فوق الكلب.",
    "a",
    " ".join(CORPUS),  # longer than the window: truncated
]


def wordpiece(cls: str, sep: str, pad: str, unk: str, mask: str) -> PreTrainedTokenizerFast:
    specials = [pad, unk, cls, sep, mask] if pad == "[PAD]" else [cls, pad, sep, unk, mask]
    tokenizer = Tokenizer(WordPiece(unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    return _wrap(tokenizer, cls, sep, pad, unk, mask)


def byte_bpe() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 3, trainer)
    return _wrap(tokenizer, "<s>", "</s>", "<pad>", "<unk>", "<mask>")


def unigram() -> PreTrainedTokenizerFast:
    """A sentencepiece-style unigram tokenizer (XLM-RoBERTa's kind)."""
    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(CORPUS * 3, trainer)
    return _wrap(tokenizer, "<s>", "</s>", "<pad>", "<unk>", "<mask>")


def _wrap(tokenizer: Tokenizer, cls: str, sep: str, pad: str, unk: str, mask: str) -> PreTrainedTokenizerFast:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        cls_token=cls,
        sep_token=sep,
        bos_token=cls,
        eos_token=sep,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        model_max_length=MAX_TOKENS,
    )


def config(kind: str, vocab: int, pad: int):
    common = {"vocab_size": vocab, "initializer_range": 0.2, "pad_token_id": pad}
    bert_like = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
    }
    if kind == "bert":
        return BertConfig(**common, **bert_like, max_position_embeddings=MAX_TOKENS)
    if kind == "roberta":
        return RobertaConfig(**common, **bert_like, max_position_embeddings=MAX_TOKENS + pad + 1, type_vocab_size=1)
    if kind == "xlm-roberta":
        return XLMRobertaConfig(**common, **bert_like, max_position_embeddings=MAX_TOKENS + pad + 1, type_vocab_size=1)
    if kind == "mpnet":
        return MPNetConfig(**common, **bert_like, max_position_embeddings=MAX_TOKENS + pad + 1)
    if kind == "distilbert":
        return DistilBertConfig(
            **common, dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64, activation="gelu", max_position_embeddings=MAX_TOKENS
        )
    raise ValueError(kind)


#: name: (architecture, tokenizer, pooling modes, Dense output size or None, normalise, prompts)
MODELS = {
    "bert-mean-prompts": ("bert", "wordpiece", ["mean"], None, True, {"query": "query: ", "passage": "passage: "}),
    "bert-cls-dense": (
        "bert",
        "wordpiece",
        ["cls"],
        16,
        True,
        {"query": "Represent this sentence for searching relevant passages: "},
    ),
    "bert-cls-max-sqrt": ("bert", "wordpiece", ["cls", "max", "mean_sqrt_len_tokens"], None, False, {}),
    "roberta-max": ("roberta", "bpe", ["max"], None, False, {}),
    "xlm-roberta-mean": ("xlm-roberta", "unigram", ["mean"], None, True, {"query": "query: ", "document": "passage: "}),
    "mpnet-weightedmean": ("mpnet", "mpnet", ["weightedmean"], None, True, {}),
    "mpnet-mean": ("mpnet", "mpnet", ["mean"], None, True, {}),
    "distilbert-lasttoken": ("distilbert", "wordpiece", ["lasttoken"], 24, True, {}),
}


def make(name: str, seed: int) -> None:
    kind, tokenizer_kind, pooling, dense, normalize, prompts = MODELS[name]
    torch.manual_seed(seed)
    if tokenizer_kind == "wordpiece":
        tokenizer = wordpiece("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
    elif tokenizer_kind == "mpnet":
        tokenizer = wordpiece("<s>", "</s>", "<pad>", "[UNK]", "<mask>")
    elif tokenizer_kind == "bpe":
        tokenizer = byte_bpe()
    else:
        tokenizer = unigram()
    if kind != "bert":  # only BERT takes token types
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer,
            **tokenizer.special_tokens_map,
            model_max_length=MAX_TOKENS,
            model_input_names=["input_ids", "attention_mask"],
        )
    transformer_dir = OUT / f".{name}-transformer"
    shutil.rmtree(transformer_dir, ignore_errors=True)
    model = AutoModel.from_config(config(kind, len(tokenizer), tokenizer.pad_token_id))
    model.save_pretrained(transformer_dir, safe_serialization=True)
    tokenizer.save_pretrained(transformer_dir)
    modules: list[torch.nn.Module] = [models.Transformer(str(transformer_dir), max_seq_length=MAX_TOKENS)]
    modules.append(models.Pooling(HIDDEN, pooling_mode=pooling[0] if len(pooling) == 1 else tuple(pooling)))
    if dense:
        modules.append(models.Dense(HIDDEN * len(pooling), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    target = OUT / name
    shutil.rmtree(target, ignore_errors=True)
    st.save(str(target))
    shutil.rmtree(transformer_dir)
    for pattern in ("README.md", "vocab.txt", "*.pt"):
        for extra in target.glob(pattern):
            extra.unlink()
    reference = {
        "texts": TEXTS,
        "document": st.encode_document(TEXTS, convert_to_numpy=True).tolist(),
        "query": st.encode_query(TEXTS, convert_to_numpy=True).tolist(),
        "made_with": {"sentence-transformers": _version("sentence_transformers"), "transformers": _version("transformers")},
    }
    (target / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"{name}: {sum(f.stat().st_size for f in target.rglob('*') if f.is_file()) / 1024:.0f} KiB", file=sys.stderr)


def _version(module: str) -> str:
    return __import__(module).__version__


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(MODELS):
        make(name, seed)
