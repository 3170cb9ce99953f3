"""Chunk planning on token offsets: every piece fits, pieces overlap, boundaries are chosen well."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from vectorize.core.chunking import plan_chunks, word_offsets


def pieces(text: str, budget: int, overlap: int) -> list[str]:
    return [text[a:b] for a, b in plan_chunks(text, word_offsets([text])[0], budget, overlap)]


def tokens_in(text: str, span: tuple[int, int], offsets: list[tuple[int, int]]) -> int:
    return sum(1 for a, b in offsets if a >= span[0] and b <= span[1])


def test_a_text_that_fits_is_one_chunk_of_all_of_it() -> None:
    text = "  short text, with trailing space  "
    assert plan_chunks(text, word_offsets([text])[0], budget=10, overlap=2) == [(0, len(text))]


@given(
    words=st.lists(st.sampled_from(["alpha", "beta.", "gamma,", "delta\n\n", "eps\n", "zeta!"]), min_size=1, max_size=400),
    budget=st.integers(8, 60),
    overlap_share=st.floats(0, 0.5),
)
def test_every_chunk_fits_and_together_they_cover_the_text(words: list[str], budget: int, overlap_share: float) -> None:
    text = " ".join(words)
    offsets = word_offsets([text])[0]
    overlap = int(budget * overlap_share)
    spans = plan_chunks(text, offsets, budget, overlap)
    for span in spans:
        assert tokens_in(text, span, offsets) <= budget
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # No token is left out, and each piece moves on.
    for a, b in offsets:
        assert any(start <= a and b <= end for start, end in spans)
    assert all(later[0] > earlier[0] for earlier, later in itertools.pairwise(spans))


def test_neighbours_overlap_by_about_the_overlap() -> None:
    rng = random.Random(7)
    text = " ".join(rng.choice(["lorem", "ipsum", "dolor", "sit", "amet"]) for _ in range(1000))
    offsets = word_offsets([text])[0]
    spans = plan_chunks(text, offsets, budget=100, overlap=20)
    for (_, end), (start, _) in itertools.pairwise(spans):
        shared = tokens_in(text, (start, end), offsets)
        assert 15 <= shared <= 25


def test_cuts_prefer_paragraphs_then_sentences_then_words() -> None:
    para = " ".join(["word"] * 30)
    text = f"{para}.\n\n{para} end of a sentence. {para}"
    chunks = pieces(text, budget=50, overlap=0)
    assert chunks[0].endswith(f"{para}.")  # the paragraph break, although a sentence end is nearer the budget
    sentences = "one two three four five. six seven eight nine ten. eleven twelve thirteen fourteen"
    assert pieces(sentences, budget=12, overlap=0)[0] == "one two three four five. six seven eight nine ten."
