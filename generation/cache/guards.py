"""The similarity layer's guards: a candidate above the cosine threshold is still refused when
its text differs in a way an embedding scores as close (docs/cache.md#guards). Measured on
all-MiniLM-L6-v2, requests that differ by a number ("tables up to 5" / "up to 12") or a negation
("with a calculator" / "without") score as high as paraphrases; these checks tell them apart.

Each guard takes the two normalised texts (casefolded, whitespace collapsed) and returns the
guard's name when it refuses, None when it lets the pair pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")

_NUMBER_WORDS = {
    word: n
    for n, words in enumerate(
        [
            ("zero", "none"),
            ("one", "first", "single"),
            ("two", "second", "twice", "both", "pair"),
            ("three", "third", "thrice"),
            ("four", "fourth"),
            ("five", "fifth"),
            ("six", "sixth"),
            ("seven", "seventh"),
            ("eight", "eighth"),
            ("nine", "ninth"),
            ("ten", "tenth"),
            ("eleven", "eleventh"),
            ("twelve", "twelfth", "dozen"),
        ]
    )
    for word in words
} | {
    "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000,
}  # fmt: skip
# "One" and "both" as words rarely carry a quantity a lesson depends on ("one of the causes").
_WEAK_NUMBER_WORDS = {"one", "both", "none", "single", "pair"}
_ROMAN = {
    "ii": 2, "iii": 3, "iv": 4, "vi": 6, "vii": 7, "viii": 8, "ix": 9, "xi": 11, "xii": 12,
}  # fmt: skip
# "I" is a numeral only after these ("world war i", "part i"), never the pronoun.
_ROMAN_I_AFTER = {"war", "part", "chapter", "unit", "volume", "book", "act", "phase", "stage"}

# Negation cues (English first, then the other languages courses are often asked in).
_NEGATIONS = {
    "no", "not", "without", "never", "none", "nor", "neither", "cannot", "excluding", "except",
    "avoid", "avoiding", "non", "nothing",
    "sans", "pas", "jamais", "aucun", "aucune", "ohne", "nicht", "kein", "keine", "nie",
    "sin", "nunca", "ningún", "ninguna", "senza", "mai", "nessun",
}  # fmt: skip
_NEGATED_PREFIXES = ("non-", "non", "in", "un", "anti-", "dis")

# Words that say nothing about a course's subject: function words and course boilerplate.
_FILLER_WORDS = """
a an the and or of to in on for with by at from into about as is are be being been it its
this that these those their there how what why when which who whose do does did done can
could should would will may might must your you our we they them he she his her i my me up
out over under than then so such some any all each every more most other others also very
just only introduction intro introductory basic basics fundamentals fundamental overview
understanding understand guide course lesson lessons learn learning learners learner
beginner beginners essentials essential principles principle concepts concept topic topics
study studying simple simply key main general important using use used make makes making
works work working know knowing way ways new part parts get getting explained explain
explaining through via le la les un une des du de et en pour avec der die das und ein eine
für mit el los las y para con del
"""
_FILLER = frozenset(_FILLER_WORDS.split())


# Course boilerplate around a subject ("an introduction to", "for beginners", "explained"):
# it says nothing about what the course is on, yet moves a short topic's embedding a lot.
_BOILERPLATE = re.compile(
    r"\b(?:(?:an?|the)\s+)?(?:introduction|intro|overview|guide|primer)\s+(?:to|of|on)\b"
    r"|\b(?:the\s+)?(?:basics|fundamentals|essentials|principles)\s+of\b"
    r"|[:,-]?\s*an?\s+(?:introduction|overview|primer)\b"
    r"|\b(?:for|to)\s+(?:complete\s+)?beginners\b"
    r"|\b(?:learning|all)\s+about\b|\bunderstanding\b|\bexplained\b"
    r"|\b(?:introduction|overview|basics|fundamentals|essentials)\b"
    r"|\b(?:basic|introductory)\b"
)


def strip_boilerplate(text: str) -> str:
    """The text without course boilerplate; the text itself when nothing else is left."""
    stripped = " ".join(_BOILERPLATE.sub(" ", text).split()).strip(" :,-.")
    return stripped or text


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _stem(word: str) -> str:
    """A crude English stem: enough to match plural and verb forms, not meant to be linguistic."""
    for suffix in ("ational", "ization", "ations", "ation", "ities", "ity", "ies", "ing", "ers"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ities") else "")
    for suffix in ("ically", "ical", "ally", "ly", "al", "ic", "ive", "ed", "es", "er", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def content_terms(text: str) -> dict[str, str]:
    """The words that carry a course's subject, by their stem."""
    return {
        _stem(w): w
        for w in words(text)
        if w not in _FILLER and w not in _NEGATIONS and not w.isdigit() and len(w) > 1
    }


def content_words(text: str) -> set[str]:
    return set(content_terms(text))


def _related(a: str, b: str) -> bool:
    """Stems of one word family ("digest"/"digestion", "safe"/"safety", "egypt"/"egyptian")."""
    if a == b:
        return True
    shorter, longer = sorted((a, b), key=len)
    return len(shorter) >= 4 and longer.startswith(shorter[:5] if len(shorter) >= 5 else shorter)


def unshared_words(a: str, b: str) -> tuple[set[str], set[str]]:
    """The content words each text has that the other lacks (word families count as shared)."""
    ta, tb = content_terms(a), content_terms(b)
    only_a = {w for s, w in ta.items() if not any(_related(s, o) for o in tb)}
    only_b = {w for s, w in tb.items() if not any(_related(s, o) for o in ta)}
    return only_a, only_b


def numbers(text: str) -> set[str]:
    """Every number a text states: digits, number words and ordinals, Roman numerals."""
    found = {n.replace(",", ".") for n in _DIGITS.findall(text)}
    tokens = words(text)
    for i, token in enumerate(tokens):
        value = _NUMBER_WORDS.get(token) if token not in _WEAK_NUMBER_WORDS else None
        if value is None:
            value = _ROMAN.get(token)
        if value is None and token == "i" and i and tokens[i - 1] in _ROMAN_I_AFTER:
            value = 1
        if value is not None:
            found.add(str(value))
    return found


def negations(text: str) -> int:
    """How many negation cues a text has, "n't" and "non-" among them."""
    tokens = words(text)
    count = sum(1 for w in tokens if w in _NEGATIONS or w.endswith(("n't", "n\u2019t")))
    return count + sum(1 for w in tokens if w.startswith("non-"))


def overlap(a: str, b: str) -> float:
    """The share of content words the two texts have in common, of the larger set (word
    families count as shared); 1.0 when neither has any."""
    ta, tb = content_words(a), content_words(b)
    if not ta or not tb:
        return 1.0 if ta == tb else 0.0
    shared = sum(1 for s in ta if any(_related(s, o) for o in tb))
    return shared / max(len(ta), len(tb))


def _negated_words(text: str) -> set[str]:
    """Words that differ from another text's only by a negating prefix ("verbal"/"non-verbal",
    "vertebrate"/"invertebrate") are checked by stripping it."""
    out = set()
    for w in words(text):
        for prefix in _NEGATED_PREFIXES:
            if w.startswith(prefix) and len(w) - len(prefix) >= 4:
                out.add(w[len(prefix) :].lstrip("-"))
    return out


def number_guard(a: str, b: str) -> str | None:
    return "numbers" if numbers(a) != numbers(b) else None


def negation_guard(a: str, b: str) -> str | None:
    if negations(a) != negations(b):
        return "negation"
    wa, wb = set(words(a)), set(words(b))
    # A word on one side that is the other side's word with a negating prefix.
    if (_negated_words(a) - wa) & wb or (_negated_words(b) - wb) & wa:
        return "negation"
    return None


def instructions_guard(a: str, b: str) -> str | None:
    """Instructions on one side only: a teacher's wish is never dropped or invented."""
    return "instructions" if bool(a.strip()) != bool(b.strip()) else None


def make_overlap_guard(minimum: float) -> Callable[[str, str], str | None]:
    def overlap_guard(a: str, b: str) -> str | None:
        return "overlap" if overlap(a, b) < minimum else None

    return overlap_guard
