"""Text in, unit vectors out: tokenise, batch by length, run the ONNX graph.

Why batches are built from length-sorted texts under a token budget: the cost
of a batch is its row count times its *longest* row, so mixing a 10-token and a
256-token text in one batch wastes most of the work on padding. Sorting first
and capping padded tokens (rather than rows) keeps every batch dense and the
memory per batch bounded.

Why calls have a priority: the worker embeds a live change while a backfill
batch of hundreds of rows is being embedded. Each inference call is a small
slice (about 1024 tokens, a fraction of a second), and a free session always
goes to the most urgent waiting slice, so a live change waits for at most the
slices already running, never for the rest of the backfill batch.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from vectorize.core.scheduler import BULK, URGENT
from vectorize.embedding.errors import EmbeddingAborted

# Padded tokens per inference call. With one single-threaded session per core,
# ~1024 (about 10 rows of ~100 tokens) measured best on 2 AVX2 cores (bench/):
# one two-threaded session at 2048 was ~10% slower, at 4096 ~20% slower.
DEFAULT_TOKEN_BUDGET = 1024
MAX_ROWS_PER_BATCH = 64
#: Batches the worker keeps in flight per lane, each embedding while the other reads or writes
#: (the worker's pipeline depth); tuning times the engine with as many calls at once.
BATCHES_IN_FLIGHT = 2

#: A hook that may raise for a text; tests use it to inject poison rows.
FailureHook = Callable[[str], None]


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """The shipped tokenizer.json truncates at 128 and pads to 128: override both."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return tokenizer


#: Characters of a long text tokenised first (per token the model reads): tokenising all of a
#: 1 MB text to keep its first 256 tokens took 1.9 s; its first 16k characters take 17 ms.
HEAD_CHARS_PER_TOKEN = 64


def encode_truncated(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    """The truncating tokenizer's encodings of ``texts``, equal to ``encode_batch``'s, without
    tokenising what truncation drops: a long text is tokenised by its head (cut at whitespace,
    where pre-tokenisers split), and in full only when the head does not overflow the limit."""
    truncation = tokenizer.truncation
    limit = HEAD_CHARS_PER_TOKEN * truncation["max_length"] if truncation else 0
    heads = list(texts)
    for i, text in enumerate(texts):
        if limit and len(text) > limit:
            cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
            if cut > 0:
                heads[i] = text[:cut]
    encodings = tokenizer.encode_batch(heads, add_special_tokens=True)
    for i, encoding in enumerate(encodings):
        if heads[i] is not texts[i] and not encoding.overflowing:
            encodings[i] = tokenizer.encode(texts[i], add_special_tokens=True)
    return encodings


class TokenCounter:
    """The model's own tokenizer, untruncated: where each token of a text is, to plan chunks."""

    def __init__(self, tokenizer_path: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Each text's tokens as character spans, without the special tokens."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.offsets) for e in encodings]


def make_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Our exporter writes bias + residual + LayerNorm unfused on purpose (see export._dense_add_norm).
    return ort.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"]
    )


def plan_batches(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Group row indices, shortest first, so that rows × longest row stays under the budget."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and end - start < max_rows:
            longest = lengths[order[end]]
            if longest * (end - start + 1) > token_budget:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class SessionPool:
    """Sessions handed out by priority: a released session goes straight to the most urgent
    waiter (first come first served within a priority), never back to whoever asks next."""

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self._idle = list(sessions)
        self._waiters: list[tuple[int, int, list[ort.InferenceSession], threading.Event]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def acquire(self, priority: int) -> ort.InferenceSession:
        with self._lock:
            if self._idle and not self._waiters:
                return self._idle.pop()
            slot: list[ort.InferenceSession] = []
            ready = threading.Event()
            heapq.heappush(self._waiters, (priority, next(self._order), slot, ready))
        ready.wait()
        return slot[0]

    def release(self, session: ort.InferenceSession) -> None:
        with self._lock:
            if self._waiters:
                _, _, slot, ready = heapq.heappop(self._waiters)
                slot.append(session)
                ready.set()
            else:
                self._idle.append(session)


class Encoder:
    """One ONNX session and tokenizer for one model; thread-safe for ``embed`` calls."""

    def __init__(
        self,
        onnx_path: Path,
        tokenizer_path: Path,
        *,
        dimension: int,
        max_tokens: int,
        threads: int | None = None,
        sessions: int | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self.dimension = dimension
        self.token_budget = token_budget
        self.tokenizer = load_tokenizer(tokenizer_path, max_tokens)
        self.counter = TokenCounter(tokenizer_path)
        #: Put before each text by kind, as sentence-transformers does (e5's "query: ", bge's instruction).
        self.prompts = dict(prompts or {})
        # A row's chunks leave room for the document prompt, so prompt and chunk fit the window.
        prompt_tokens = len(self.counter.offsets([self.prompts["document"]])[0]) if "document" in self.prompts else 0
        self.max_tokens = max_tokens - prompt_tokens
        threads = threads or os.cpu_count() or 1
        # Small GEMMs scale badly across threads, so by default every core gets a
        # single-threaded session of its own and batches run side by side on them.
        count = max(1, min(sessions or threads, threads))
        self.sessions = [make_session(onnx_path, max(1, threads // count)) for _ in range(count)]
        self._sessions = SessionPool(self.sessions)
        # One set of threads per priority, so urgent slices are never queued behind bulk ones
        # in an executor; the session pool decides who runs.
        self._executors = {
            priority: ThreadPoolExecutor(max_workers=count, thread_name_prefix=f"onnx-p{priority}") for priority in (URGENT, BULK)
        }
        self.failure_hook: FailureHook | None = None

    def embed(
        self, texts: Sequence[str], abort: threading.Event | None = None, priority: int = URGENT, kind: str = "document"
    ) -> np.ndarray:
        """Embed ``texts`` in their given order; rows are L2-normalised float32.

        ``abort`` is checked between inference calls (each well under a second), so a
        shutdown never waits for a whole large batch. ``priority`` (URGENT or BULK) decides
        who gets the next free session when calls overlap. ``kind`` ("document" or "query") picks
        the model's prompt for that kind, if it has one."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        prompt = self.prompts.get(kind, "")
        if prompt:
            texts = [prompt + text for text in texts]
        hook = self.failure_hook  # read once: a test may clear it while this call runs
        if hook is not None:
            for text in texts:
                hook(text)
        encodings = encode_truncated(self.tokenizer, texts)
        lengths = [len(e.ids) for e in encodings]

        def run(batch: np.ndarray) -> None:
            if abort is not None and abort.is_set():
                raise EmbeddingAborted("embedding aborted for shutdown")
            width = max(lengths[i] for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, index in enumerate(batch):
                n = lengths[index]
                ids[row, :n] = encodings[index].ids
                mask[row, :n] = 1
            session = self._sessions.acquire(priority)  # each session runs one slice at a time
            try:
                (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            finally:
                self._sessions.release(session)
            out[batch] = vectors

        batches = plan_batches(lengths, self.token_budget, MAX_ROWS_PER_BATCH)
        if len(self.sessions) == 1 or len(batches) == 1:
            for batch in batches:
                run(batch)
        else:
            futures = [self._executors[priority].submit(run, batch) for batch in batches]
            try:
                for future in futures:
                    future.result()
            finally:  # after a failure, batches not yet started are dropped
                for future in futures:
                    future.cancel()
        return out
