"""A SIMULATED moderation endpoint: a deterministic, rule-based classifier, not a model.

It stands in for OpenAI's moderation endpoint when no network or key is at hand (the demo, the
tests, benchmarks). Its rules look for *intent* (instructions to harm, hate speech, explicit
sexual content, encouragement of self-harm, bullying), not for sensitive subjects, so school
topics such as "the history of the Holocaust", "puberty and health education" or "the chemistry
of explosives safety" pass while "how to make a pipe bomb" does not. Its precision and recall
are measured on the labelled set in tests/test_moderation_set.py; on real-world text it is far
weaker than a trained classifier, so production uses `omni-moderation-latest` (docs/safety.md).
"""

from __future__ import annotations

import re
import re._parser as _p  # the stdlib's own regex parser: the prefilter's literals
import time
from typing import Any

import ahocorasick_rs

from generation.providers.base import (
    MODERATION_CATEGORIES,
    ModerationRequest,
    ModerationResult,
)

SIMULATED_MODEL = "offline-moderation-simulator"
FLAG_SCORE = 0.9  # a matched rule's score; categories with no match score 0
THRESHOLD = 0.5

_ANYONE = (
    r"(?:someone|somebody|people|a person|my \w+|him|her|them|classmates?|teachers?|students?)"
)
_GROUPS = (
    r"(?:jews|jewish people|muslims|christians|black people|white people|asians|immigrants|"
    r"refugees|gay people|gays|lesbians|trans people|women|girls|disabled people|gypsies|"
    r"travellers|arabs|mexicans|africans|foreigners)"
)
_RULES: dict[str, tuple[str, ...]] = {
    "dangerous": (
        r"\b(?:how (?:to|do i|can i|do you)|instructions (?:to|for)|step[- ]by[- ]step|recipe|"
        r"guide to|tutorial|teach (?:me|us|students|pupils) (?:how )?to|ways to|i want to)\b"
        r"[^.?!]{0,30}\b(?:make|making|build|building|assemble|construct|synthesi[sz]e|cook|"
        r"brew|manufacture)\b[^.?!]{0,40}\b(?:bombs?|pipe bombs?|explosive devices?|grenades?|"
        r"napalm|nerve (?:agent|gas)|ricin|meth(?:amphetamine)?|poison gas|molotovs?)\b",
        r"\bhow (?:to|do i|can i)\b[^.?!]{0,30}\b(?:buy|get|obtain|smuggle|sell)\b[^.?!]{0,30}"
        r"\b(?:drugs|cocaine|heroin|fentanyl|a gun|guns|firearms?|weapons?)\b",
        r"\b(?:poison|drug|spike)\w*\b[^.?!]{0,25}\b(?:someone|somebody|a teacher|a classmate|"
        r"my \w+)(?:'s)?\b",
        r"\bhow to (?:hack|break) into\b",
    ),
    "violence": (
        r"\bhow (?:to|do i|can i|should i)\b[^.?!]{0,30}\b(?:kill|murder|stab|shoot|strangle|"
        r"hurt|beat up|attack|torture)\b[^.?!]{0,30}\b" + _ANYONE + r"\b",
        r"\b(?:plan|planning|carry out|carrying out)\b[^.?!]{0,30}\b(?:attack|shooting|massacre|"
        r"stabbing|bombing)\b[^.?!]{0,30}\b(?:school|class|classmates|teachers?|people)\b",
        r"\b(?:glorif\w+|celebrat\w+|prais\w+)\b[^.?!]{0,30}\b(?:mass shootings?|terrorist "
        r"attacks?|massacres?|school shootings?)",
        r"\bgraphic(?:ally)?\b[^.?!]{0,30}\b(?:gore|torture|mutilat\w+|dismember\w+)",
        r"\bi (?:will|am going to|want to) (?:kill|hurt|shoot|stab)\b",
    ),
    "self_harm": (
        r"\b(?:ways|how|best way|methods?|easiest way)\b[^.?!]{0,20}\b(?:to )?(?:kill (?:myself|"
        r"yourself|themselves)|commit suicide|end (?:my|your) life|self[- ]harm|cut (?:myself|"
        r"yourself))\b(?! prevention| awareness)",
        r"\bi (?:want|am going|plan) to (?:die|kill myself|end it all|hurt myself)\b",
        r"\b(?:pro[- ]ana|thinspiration)\b",
        r"\b(?:encourag\w+|promot\w+)\b[^.?!]{0,20}\b(?:self[- ]harm|suicide|starv\w+|"
        r"anorexi\w+)\b(?! prevention| awareness)",
        r"\bhow to (?:hide|conceal) (?:self[- ]harm|cuts|an eating disorder)",
        r"\bstarv(?:e|ing) (?:yourself|myself)\b",
    ),
    "sexual": (
        r"\b(?:porn\w*|erotic\w*|explicit sex\w*|sex scenes?|sexting|nudes|naked photos?|"
        r"hentai|fetish\w*)\b",
        r"\bsexual (?:fantas\w+|roleplay|role-play|stories|positions)\b",
        r"\b(?:seduce|hook up with|date)\b[^.?!]{0,20}\b(?:a |my |your )?(?:teacher|pupil|"
        r"minor|child|student)\b",
    ),
    "hate": (
        r"\b" + _GROUPS + r"\b[^.?!]{0,20}\b(?:are|is) (?:inferior|subhuman|vermin|animals|"
        r"stupid|evil|a disease|parasites|criminals)\b",
        r"\bwhy\b[^.?!]{0,40}\b(?:race|races|religion)\b[^.?!]{0,20}\b(?:inferior|superior)\b",
        r"\b(?:racial|white|ethnic) (?:superiority|supremacy)\b[^.?!]{0,20}\b(?:is|was) "
        r"(?:right|justified|good|true)\b",
        r"\bthe holocaust (?:never happened|was a hoax|is a myth|was fake)\b",
        r"\b(?:deny|denying|disprove)\b[^.?!]{0,10}\bthe holocaust\b",
        r"\b(?:racist|homophobic|sexist|antisemitic|transphobic) (?:jokes?|slurs?|insults?|"
        r"memes?|chants?)\b",
        r"\b" + _GROUPS + r"\b[^.?!]{0,20}\bshould (?:be|all be) (?:deported|exterminated|"
        r"banned|eliminated|killed)\b",
    ),
    "harassment": (
        r"\bhow to (?:bully|humiliate|mock|torment|harass|intimidate|make fun of|insult|troll|"
        r"cyberbully)\b",
        r"\b(?:insults?|roasts?|mean jokes?|nicknames?) (?:for|about) (?:a |my |the )?"
        r"(?:fat |ugly |disabled |poor |stupid |new )?"
        r"(?:classmate|kid|student|teacher|girl|boy)s?\b",
        r"\b(?:you are|you're|he is|she is) (?:a )?(?:worthless|pathetic|ugly|disgusting|"
        r"a loser|an idiot)\b",
        r"\b(?:everyone|everybody|nobody) (?:hates|likes) you\b",
        r"\b(?:kys|go kill yourself)\b",
    ),
}


# --- A literal prefilter ----------------------------------------------------------------------
# Most texts match no rule, and a case-insensitive search of a few kilobytes with a rule that
# starts with an alternation costs ~0.1 ms per rule (30 rules: 2 ms a task, the largest share of a
# worker's CPU in `make bench`). Each rule gets sets of literal strings, every match containing one
# string of each set (derived from the rule itself, so they cannot drift from it); the rule's regex
# runs only when the lower-cased text holds one string of every set. Same verdicts, less time.
MIN_NEEDLE = 3  # shorter required literals ("a ", "i ") filter nothing
MAX_NEEDLES = 64
Needles = tuple[tuple[str, ...], ...]


def _alternatives(op: Any, av: Any) -> list[Any] | None:
    """The parsed sequences one of which an item matches, when it is a choice among them."""
    if op is _p.SUBPATTERN and not av[1] and not av[2]:
        return [av[3]]
    if op is _p.BRANCH:
        return list(av[1])
    if op is _p.IN and all(kind is _p.LITERAL for kind, _ in av):
        return [[(_p.LITERAL, char)] for _, char in av]  # a small class such as [- ]
    return None


def _prefixes(items: Any) -> tuple[set[str], bool]:
    """Literal strings one of which every match of the parsed sequence `items` starts with, and
    whether they are the whole match (so that what follows can extend them)."""
    found = {""}
    for op, av in items:
        if op in (_p.AT, _p.ASSERT_NOT, _p.ASSERT):
            continue  # zero-width: consumes nothing
        if op is _p.LITERAL:
            found = {f + chr(av).lower() for f in found}
            continue
        options = _alternatives(op, av)
        if options is None:
            return found, False
        alternatives = [_prefixes(option) for option in options]
        found = {f + a for f in found for alts, _ in alternatives for a in alts}
        if len(found) > MAX_NEEDLES:
            return {""}, False
        if not all(complete for _, complete in alternatives):
            return found, False
    return found, True


def needles(pattern: str) -> Needles:
    """Sets of lower-case literals such that every match of `pattern` (IGNORECASE) contains one
    literal of each set; () when it has none worth checking. A match of a pattern contains a match
    of each of its top-level suffixes, and a match of a suffix starts with one of its prefixes."""
    items = list(_p.parse(pattern, re.IGNORECASE))
    candidates = {tuple(sorted(_prefixes(items[start:])[0])) for start in range(len(items))}
    # The cheapest first (fewest strings, then the longest); a set another kept set implies is
    # dropped, such as "ow to" after "how to".
    sets: list[tuple[str, ...]] = []
    for found in sorted(candidates, key=lambda c: (len(c), -min(map(len, c)), c)):
        if min(map(len, found)) >= MIN_NEEDLE and not any(_implies(s, found) for s in sets):
            sets.append(found)
    return tuple(sets)


def _implies(kept: tuple[str, ...], found: tuple[str, ...]) -> bool:
    """True when a text holding one of `kept` holds one of `found` too: checking `found` after
    `kept` would add nothing."""
    return all(any(n in k for n in found) for k in kept)


def _may_match(found: NeedleIds, present: set[int]) -> bool:
    """Whether a text that holds the needles `present` holds one of each of a rule's sets."""
    return all(not present.isdisjoint(options) for options in found)


# Characters IGNORECASE matches with an ASCII letter that str.lower() does not turn into it.
_TO_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})


def _lower(text: str) -> str:
    """The text lower-cased as IGNORECASE compares it with the needles' ASCII letters."""
    return text.lower() if text.isascii() else text.translate(_TO_ASCII).lower()


# Every rule's needles in one Aho-Corasick automaton (ahocorasick_rs, the Rust aho-corasick
# crate): one pass over a text finds every needle it holds, where testing each needle with `in`
# scanned the text once per needle (365 needles; most of a task's 0.4 ms of simulated moderation
# went there). The automaton is immutable and safe to share between a worker's threads.
_NEEDLE_IDS: dict[str, int] = {}
NeedleIds = tuple[frozenset[int], ...]


def _ids(found: Needles) -> NeedleIds:
    return tuple(
        frozenset(_NEEDLE_IDS.setdefault(n, len(_NEEDLE_IDS)) for n in options) for options in found
    )


_COMPILED = {
    category: tuple((_ids(needles(rule)), re.compile(rule, re.IGNORECASE)) for rule in rules)
    for category, rules in _RULES.items()
}
_AUTOMATON = ahocorasick_rs.AhoCorasick(list(_NEEDLE_IDS))  # a needle's id is its index


def _present(low: str) -> set[int]:
    """The ids of the needles the lower-cased text holds (overlapping occurrences included)."""
    return {needle for needle, _, _ in _AUTOMATON.find_matches_as_indexes(low, overlapping=True)}


assert set(_COMPILED) == set(MODERATION_CATEGORIES)

# What the "unsafe" fault (offline/faults.py) slips into generated content: flagged as dangerous.
UNSAFE_SENTENCE = (
    "[simulated unsafe output] Here are step-by-step instructions to build a pipe bomb at home."
)


def classify(text: str) -> dict[str, float]:
    """Each category's score for one text: FLAG_SCORE when a rule matches, else 0."""
    present = _present(_lower(text))
    return {
        category: FLAG_SCORE
        if any(_may_match(found, present) and rule.search(text) for found, rule in rules)
        else 0.0
        for category, rules in _COMPILED.items()
    }


def simulated_moderation(request: ModerationRequest) -> ModerationResult:
    started = time.perf_counter()
    scores = dict.fromkeys(MODERATION_CATEGORIES, 0.0)
    per_text = []
    for text in request.texts:
        found = classify(text)
        per_text.append(tuple(c for c in MODERATION_CATEGORIES if found[c] >= THRESHOLD))
        for category, score in found.items():
            scores[category] = max(scores[category], score)
    flagged = tuple(c for c in MODERATION_CATEGORIES if scores[c] >= THRESHOLD)
    return ModerationResult(
        flagged=bool(flagged),
        categories=flagged,
        scores=scores,
        model=SIMULATED_MODEL,
        provider="offline",
        latency_s=time.perf_counter() - started,
        per_text=tuple(per_text),
    )
