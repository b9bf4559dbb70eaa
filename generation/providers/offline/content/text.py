"""Small English helpers for the simulator's templates: title case, articles, lists, lengths."""

from __future__ import annotations

from collections.abc import Sequence

SMALL_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "by",
    "for",
    "in",
    "of",
    "on",
    "or",
    "the",
    "to",
    "with",
}


def title_case(text: str) -> str:
    """Title-case an all-lowercase topic; leave one the user already capitalised alone."""
    if text != text.lower():
        return text
    words = text.split()
    return " ".join(
        w if i and w in SMALL_WORDS else w[:1].upper() + w[1:] for i, w in enumerate(words)
    )


def lc_first(text: str) -> str:
    text = text.strip().rstrip(".")
    if len(text) > 1 and text[1].isupper():  # an acronym such as "SQL" keeps its case
        return text
    return text[:1].lower() + text[1:]


def uc_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def a_or_an(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def join_words(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def distinct(items: Sequence[str], limit: int) -> list[str]:
    """Drop entries equal after case/space normalisation (the schema rejects those)."""
    seen: set[str] = set()
    result = []
    for item in items:
        key = " ".join(item.lower().split())
        if key and key not in seen:
            seen.add(key)
            result.append(item)
    return result[:limit]


def fit(text: str, limit: int) -> str:
    """Cut at a sentence boundary when a very long title or topic pushes text past `limit`."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(". ") + 1] or cut
