"""Token counts: a text counted from its paragraphs' cached counts equals tiktoken's whole count."""

from __future__ import annotations

import random
import re

import pytest

from generation import tokens

# The pieces a text is counted in: random texts of the characters that decide where o200k_base
# cuts its pre-tokens (blank lines next to spaces, slashes, punctuation, carriage returns).
_ATOMS = [
    "word", "Word", " ", "  ", "\t", "\xa0", "\n", "\n\n", "\n\n\n", "\r", "\r\n", ".", "/",
    "::", "**", "# ", "-", ")", '"', "'s", "'S", "123", "4567", "Ünï", "é", "中文", "😀",
    "<|endoftext|>",
]  # fmt: skip


def test_paragraphs_cut_after_every_blank_line_as_the_lookbehind_split_does() -> None:
    rng = random.Random(7)
    split = re.compile(r"(?<=\n\n)").split
    for _ in range(5_000):
        text = "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 30)))
        assert tokens.paragraphs(text) == split(text), repr(text)


@pytest.mark.parametrize(
    "text",
    ["a\n\n\nb", "x.\n\n/y", "a\n\n  \nb", "a\n\n b", "a\r\n\r\nb", "a\n\n", "", "a\n\nb"],
)
def test_a_text_counts_as_many_tokens_from_its_paragraphs_as_whole(text: str) -> None:
    assert tokens.text_tokens(text) == len(tokens.encoding().encode(text, disallowed_special=()))


def test_random_texts_count_as_many_tokens_from_their_paragraphs_as_whole() -> None:
    rng = random.Random(11)
    whole = tokens.encoding()
    for _ in range(5_000):
        text = "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 40)))
        expected = len(whole.encode(text, disallowed_special=()))
        assert tokens.text_tokens(text) == expected, repr(text)


def test_a_chat_request_counts_its_messages_whole_plus_the_chat_format() -> None:
    rng = random.Random(13)
    whole = tokens.encoding()
    for _ in range(500):
        texts = [
            "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 40)))
            for _ in range(rng.randint(1, 3))
        ]
        messages = [{"role": "user", "content": text} for text in texts]
        expected = sum(len(whole.encode(t, disallowed_special=())) + 3 for t in texts) + 3
        assert tokens.count_message_tokens(messages) == expected, texts


def test_paragraph_tokens_give_each_paragraph_its_own_count() -> None:
    counted, total = tokens.paragraph_tokens("Guide.\n\nCourse data.\n\nThe task.")
    assert [part for part, _ in counted] == ["Guide.\n\n", "Course data.\n\n", "The task."]
    assert [n for _, n in counted] == [tokens.count_tokens(part) for part, _ in counted]
    assert total == tokens.count_tokens("Guide.\n\nCourse data.\n\nThe task.")
