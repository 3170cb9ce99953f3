"""Where to cut a long text so that every piece fits the model's window.

Why token offsets and not characters: the model reads at most its window of *its
own* tokens; a splitter that counts characters can still produce pieces the model
cuts short. The planner works on the tokenizer's character offsets of each token,
so a piece of at most ``budget`` tokens is exactly that for the model too.

Why boundaries are chosen: a piece that ends mid-sentence embeds a half thought.
Inside the budget, the last paragraph break wins; failing that, the last sentence
end; failing that, the last word boundary (only the second half of the budget is
considered, so no piece gets tiny). Consecutive pieces overlap by about
``overlap`` tokens so a sentence cut at a boundary is still whole in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

#: (start, end) character offsets of a piece of the text.
Span = tuple[int, int]

_PARAGRAPH, _SENTENCE, _WORD = 3, 2, 1
_SENTENCE_END = (".", "!", "?", ";", ":")


def _boundary(text: str, offsets: Sequence[Span], k: int) -> int:
    """How good a cut after token ``k`` is (0: inside a word)."""
    end, next_start = offsets[k][1], offsets[k + 1][0]
    gap = text[end:next_start]
    if not gap or gap.strip():
        return 0  # no whitespace between the tokens: inside a word, or before punctuation
    if gap.count("\n") >= 2:
        return _PARAGRAPH
    if text[end - 1] in _SENTENCE_END:
        return _SENTENCE
    return _WORD  # a single line break is only a wrapped line


def plan_chunks(text: str, offsets: Sequence[Span], budget: int, overlap: int) -> list[Span]:
    """Spans of ``text`` of at most ``budget`` tokens each (``offsets``: each token's character
    span, special tokens excluded), overlapping by about ``overlap`` tokens. A text that fits
    is one span covering all of it, so its embedding is exactly the unchunked one."""
    n = len(offsets)
    if n <= budget:
        return [(0, len(text))]
    spans: list[Span] = []
    start = 0
    while start < n:
        last = start + budget - 1  # the last token that fits
        if last >= n - 1:
            spans.append((0 if not spans else offsets[start][0], len(text)))
            break
        best, best_score = last, 0
        for k in range(last, start + budget // 2 - 1, -1):
            score = _boundary(text, offsets, k)
            if score > best_score:
                best, best_score = k, score
                if score == _PARAGRAPH:
                    break
        spans.append((0 if not spans else offsets[start][0], offsets[best][1]))
        # The next piece starts ``overlap`` tokens back, at the start of a word, always moving on.
        following = max(best + 1 - overlap, start + 1)
        while following <= best and following > 0 and _boundary(text, offsets, following - 1) == 0:
            following += 1
        start = following
    return spans


class Counter(Protocol):
    def offsets(self, texts: Sequence[str]) -> list[list[Span]]: ...


_WORDS = re.compile(r"\S+")


def word_offsets(texts: Sequence[str]) -> list[list[Span]]:
    """The fallback counter when no tokenizer is at hand: one token per word."""
    return [[m.span() for m in _WORDS.finditer(text)] for text in texts]


def split_texts(texts: Sequence[str], counter: Counter | None, budget: int, overlap: int) -> list[list[Span]]:
    """The chunks of each text: ``budget`` tokens at most (as ``counter`` counts), ``overlap`` shared."""
    offsets = counter.offsets(texts) if counter is not None else word_offsets(texts)
    return [plan_chunks(text, spans, budget, overlap) for text, spans in zip(texts, offsets, strict=True)]
