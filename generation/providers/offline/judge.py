"""The offline simulator's judge: a verdict computed from checks a program can make.

This is NOT a language model's judgement and its scores are evidence of nothing about teaching
quality. It exists so that the judge's code paths (prompt, structured verdict, thresholds,
targeted regeneration, calibration, A/B statistics) run offline and react to the content they
are given instead of returning constants. What it can see:

* objectives taught: each objective's key words in the explanation (explained), in the examples
  (practised) and in a question (assessed); the weakest objective weighs most;
* accuracy: a multiple-choice key that its own explanation supports less than a distractor, a
  true/false key the explanation contradicts, and a pile-up of absolute claims (always, never);
* audience fit: the Flesch-Kincaid grade against the level's band, and the share of long,
  many-syllable words against what the level tolerates;
* question quality: catch-all options and stand-out answer lengths (generation/checks.py), two
  options the explanation supports equally, near-duplicate questions, questions tied to no
  objective;
* clarity and examples: how many examples, how concrete (steps, reasons), sentence length,
  paragraphs, defined terms.

It cannot tell a false statement from a true one unless the text overclaims; calibration
(manage.py judge_calibrate) shows per flaw what it catches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import textstat
from django.conf import settings

from generation import checks
from generation.rubric import RUBRIC, Criterion
from generation.schemas import Question, QuestionType

_ABSOLUTE = re.compile(
    r"\b(always|never|every|all|none|nothing|only|cannot|can't|impossible|guarantee[sd]?|"
    r"completely|entirely|no one|nobody)\b",
    re.IGNORECASE,
)
_STEPS = re.compile(
    r"\b(first|then|next|finally|step|because|so that|therefore|which means)\b", re.IGNORECASE
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CLAUSE = re.compile(r"[.;:!?]|\bbut\b|\bwhile\b|\bwhereas\b|\bhowever\b", re.IGNORECASE)
# A clause that rejects something ("the other options describe ...", "is not", "wrong"): the
# options it names are being ruled out, not supported.
_REJECTS = re.compile(
    r"\b(not|no|never|wrong|incorrect|false|fails?|mistaken|misconception|myth|other options?|"
    r"distractors?|rather than|instead of|without|nothing|neither|nor|ignores?|confuses?)\b|n't\b",
    re.IGNORECASE,
)
_HARD_WORD_SHARE = {"beginner": 0.03, "intermediate": 0.05, "advanced": 0.08}
_MAX_SENTENCE_WORDS = {"beginner": 20, "intermediate": 24, "advanced": 28}
_DUPLICATE_SIMILARITY = 70.0  # stricter than validation's: the judge flags near-repeats too
_SUPPORT_MARGIN = 0.15  # a distractor this much better supported than the key: a wrong key
_QUOTE = 160

Scored = tuple[int, str, list[str]]


@dataclass(frozen=True)
class _Lesson:
    topic: str
    level: str
    audience: str
    objectives: list[str]
    section: Mapping[str, Any]
    questions: list[Mapping[str, Any]]

    @classmethod
    def read(cls, judged: Mapping[str, Any]) -> _Lesson:
        return cls(
            topic=str(judged.get("topic", "")),
            level=str(judged.get("level", "beginner")),
            audience=str(judged.get("audience", "")),
            objectives=[str(o) for o in judged.get("objectives") or []],
            section=judged.get("section") or {},
            questions=list(judged.get("questions") or []),
        )

    @property
    def passages(self) -> list[str]:
        """The explanation's paragraphs and the key concepts' definitions: an objective is
        explained when one passage covers it, not when its words are scattered about."""
        paragraphs = str(self.section.get("detailed_explanation", "")).split("\n\n")
        concepts = [f"{c['term']}: {c['definition']}" for c in self._list("key_concepts")]
        return [p for p in paragraphs if p.strip()] + concepts

    @property
    def examples(self) -> list[Mapping[str, Any]]:
        return self._list("examples")

    @property
    def prose(self) -> str:
        parts = ("introduction", "detailed_explanation", "summary")
        return "\n\n".join(str(self.section.get(p, "")) for p in parts)

    @property
    def terms(self) -> list[str]:
        return [self.topic, *self.objectives, *(c["term"] for c in self._list("key_concepts"))]

    def _list(self, name: str) -> list[Mapping[str, Any]]:
        value = self.section.get(name) or []
        return [v for v in value if isinstance(v, Mapping)]


def simulated_verdict(judged: Mapping[str, Any]) -> dict[str, Any]:
    """A LessonVerdict (generation/rubric.py) for the lesson in `judged`."""
    lesson = _Lesson.read(judged)
    scored = {
        Criterion.OBJECTIVES_TAUGHT: _objectives_taught(lesson),
        Criterion.ACCURACY: _accuracy(lesson),
        Criterion.AUDIENCE_FIT: _audience_fit(lesson),
        Criterion.QUESTION_QUALITY: _question_quality(lesson),
        Criterion.CLARITY_EXAMPLES: _clarity(lesson),
    }
    verdict: dict[str, Any] = {
        c.value: {"justification": text, "evidence": quotes, "score": score}
        for c, (score, text, quotes) in scored.items()
    }
    weakest = min(scored, key=lambda c: scored[c][0])
    verdict["improvement"] = (
        f"Improve {RUBRIC[weakest].title.lower()}: {scored[weakest][1]}"
        if scored[weakest][0] < 5
        else "No change needed; keep the lesson as it is."
    )
    return verdict


# --- Criteria -----------------------------------------------------------------------------------
def _objectives_taught(lesson: _Lesson) -> Scored:
    passages = [checks.text_stems(p) for p in lesson.passages]
    practised = checks.text_stems(
        " ".join(f"{e.get('title', '')} {e.get('description', '')}" for e in lesson.examples)
    )
    assessed = [
        checks.text_stems(f"{q.get('stem', '')} {q.get('objective', '')}") for q in lesson.questions
    ]
    values: list[tuple[float, str, str]] = []
    for objective in lesson.objectives:
        keywords = checks.objective_keywords(objective)
        if not keywords:
            continue
        shares = (
            max((_share(keywords, stems) for stems in passages), default=0.0),
            _share(keywords, practised),
            max((_share(keywords, stems) for stems in assessed), default=0.0),
        )
        value = 0.5 * shares[0] + 0.25 * shares[1] + 0.25 * shares[2]
        values.append((value, objective, _gaps(shares)))
    if not values:
        return 3, "The lesson states no objective with key words to check.", []
    weakest, objective, gaps = min(values)
    mean = sum(v for v, _, _ in values) / len(values)
    score = _score(0.5 * weakest + 0.5 * mean)
    text = (
        f'Weakest objective: "{objective}" ({gaps}).'
        if gaps
        else "Every objective is explained, practised and assessed."
    )
    return score, text, [objective[:_QUOTE]] if gaps else []


def _gaps(shares: tuple[float, float, float]) -> str:
    names = ("explained", "practised in an example", "assessed by a question")
    missing = [f"not {n}" if s < 0.5 else "" for n, s in zip(names, shares, strict=True)]
    return ", ".join(m for m in missing if m)


def _accuracy(lesson: _Lesson) -> Scored:
    problems: list[tuple[str, str]] = []
    for number, question in enumerate(lesson.questions, start=1):
        problem = _key_problem(question)
        if problem:
            problems.append((f"question {number}: {problem}", str(question.get("stem", ""))))
    absolutes = [s for s in _sentences(lesson.prose) if _ABSOLUTE.search(s)]
    score = 5 - 2 * len(problems) - (1 if len(absolutes) >= 3 else 0)
    notes = [p for p, _ in problems]
    if len(absolutes) >= 3:
        notes.append(f"{len(absolutes)} sentences make absolute claims that may overstate")
    quotes = [q for _, q in problems] + absolutes[:1]
    text = "; ".join(notes) or "No answer key contradicts its explanation; claims are measured."
    return max(1, score), _sentence(text), _quotes(quotes)


def _affirmed(explanation: str) -> set[str]:
    """The stems of what the explanation argues for: its first clause (an explanation leads with
    why the key is right), and the later clauses that affirm rather than reject."""
    clauses = [c for c in _CLAUSE.split(explanation) if c.strip()]
    kept = clauses[:1] + [c for c in clauses[1:] if not _REJECTS.search(c)]
    return checks.text_stems(" ".join(kept))


def _key_problem(question: Mapping[str, Any]) -> str:
    explanation = _affirmed(str(question.get("explanation", "")))
    key = str(question.get("correct_answer", ""))
    kind = question.get("type")
    if kind == QuestionType.MULTIPLE_CHOICE:
        support = {o: _support(o, explanation) for o in question.get("options") or []}
        best = max((o for o in support if o != key), key=lambda o: support[o], default=None)
        if best is not None and support[best] > support.get(key, 0.0) + _SUPPORT_MARGIN:
            return f'the explanation supports "{best}" rather than the key "{key}"'
    if kind == QuestionType.TRUE_FALSE:
        text = str(question.get("explanation", "")).lower()
        says_false = bool(re.search(r"\b(false|not true|incorrect|wrong|myth)\b", text))
        if key.lower() == "true" and says_false and not re.search(r"\b(true|correct)\b", text):
            return "the key says True but the explanation argues the statement is false"
    return ""


def _audience_fit(lesson: _Lesson) -> Scored:
    low, high = settings.COURSEGEN_READING_GRADE_BANDS.get(lesson.level, (4.0, 12.0))
    grade = checks.prose_grade(lesson.prose, terms=lesson.terms)
    outside = max(low - grade, grade - high, 0.0)
    own = checks.text_stems(" ".join(lesson.terms))
    words = re.findall(r"[A-Za-z][a-z-]+", lesson.prose)
    hard = [w for w in words if len(w) >= 9 and textstat.syllable_count(w) >= 4]
    hard = [w for w in hard if w.lower() not in own]
    share = len(hard) / len(words) if words else 0.0
    limit = _HARD_WORD_SHARE.get(lesson.level, 0.05)
    excess = max(0.0, share - limit) / limit
    score = 5 - min(2, round(outside / 2)) - min(2, round(excess * 2))
    text = (
        f"Reads at grade {grade:.1f} for a {lesson.level} band of {low:g}-{high:g}; "
        f"{share:.1%} long technical words (a {lesson.level} reader manages about {limit:.0%})."
    )
    return max(1, score), text, _quotes(sorted(set(hard), key=hard.index)[:3])


def _question_quality(lesson: _Lesson) -> Scored:
    if not lesson.questions:
        return 1, "The lesson has no questions to assess its objectives.", []
    issues: list[tuple[int, str, str]] = []  # (weight, note, quote)
    for index, question in enumerate(lesson.questions):
        stem = str(question.get("stem", ""))
        issues += _question_issues(lesson, index, question)
        for earlier in lesson.questions[:index]:
            if _same_question(question, earlier, lesson.topic):
                issues.append((2, f"question {index + 1} repeats an earlier question", stem))
                break
    score = 5 - sum(weight for weight, _, _ in issues)
    text = "; ".join(note for _, note, _ in issues) or (
        "Each question has one defensible answer, fair distractors and an objective."
    )
    return max(1, score), _sentence(text), _quotes([q for _, _, q in issues])


def _question_issues(
    lesson: _Lesson, index: int, question: Mapping[str, Any]
) -> list[tuple[int, str, str]]:
    stem, number = str(question.get("stem", "")), index + 1
    issues = []
    try:
        flaws = checks.question_flaws(index, Question.model_validate(question))
    except ValueError:  # not a valid question at all: the schema's business, not the judge's
        flaws = []
    if flaws:
        issues.append((1, f"question {number}: {flaws[0].message}", stem))
    if question.get("type") == QuestionType.MULTIPLE_CHOICE:
        explanation = _affirmed(str(question.get("explanation", "")))
        key = str(question.get("correct_answer", ""))
        key_support = _support(key, explanation)
        rivals = [
            o
            for o in question.get("options") or []
            if o != key and key_support >= 0.5 and _support(o, explanation) >= key_support - 0.05
        ]
        if rivals:
            note = f'question {number}: "{rivals[0]}" is as defensible as the key'
            issues.append((2, note, stem))
    text = checks.text_stems(f"{stem} {question.get('objective', '')}")
    tied = any(_share(checks.objective_keywords(o), text) >= 0.34 for o in lesson.objectives)
    if lesson.objectives and not tied:
        issues.append((1, f"question {number} is tied to none of the lesson's objectives", stem))
    return issues


def _same_question(a: Mapping[str, Any], b: Mapping[str, Any], topic: str) -> bool:
    """Near-identical stems, or a reworded stem with the same answer among the same options."""
    similarity = checks.similarity(str(a.get("stem", "")), str(b.get("stem", "")), topic=topic)
    if similarity >= _DUPLICATE_SIMILARITY:
        return True
    same_key = _norm(a.get("correct_answer")) == _norm(b.get("correct_answer"))
    options_a = {_norm(o) for o in a.get("options") or []}
    options_b = {_norm(o) for o in b.get("options") or []}
    shared = len(options_a & options_b) / max(len(options_a | options_b), 1)
    return same_key and similarity >= 40 and (shared >= 0.5 or not options_a)


def _norm(value: Any) -> str:
    return " ".join(str(value or "").lower().split())


def _clarity(lesson: _Lesson) -> Scored:
    examples = lesson.examples
    described = [str(e.get("description", "")) for e in examples]
    concrete = [d for d in described if len(d.split()) >= 25 and _STEPS.search(d)]
    sentences = _sentences(str(lesson.section.get("detailed_explanation", "")))
    mean_words = sum(len(s.split()) for s in sentences) / len(sentences) if sentences else 0.0
    paragraphs = str(lesson.section.get("detailed_explanation", "")).count("\n\n") + 1
    limit = _MAX_SENTENCE_WORDS.get(lesson.level, 24)
    checks_passed = [
        len(examples) >= 2,
        len(concrete) >= 1,
        mean_words <= limit,
        paragraphs >= 3,
    ]
    score = 1 + sum(checks_passed)
    text = (
        f"{len(examples)} example(s), {len(concrete)} worked through step by step; sentences "
        f"average {mean_words:.0f} words (aim for at most {limit}); {paragraphs} paragraph(s)."
    )
    longest = max(sentences, key=len, default="")
    return score, text, _quotes([longest] if mean_words > limit else [])


# --- Helpers ------------------------------------------------------------------------------------
def _share(keywords: Sequence[str], stems: set[str]) -> float:
    if not keywords:
        return 0.0
    return sum(1 for word in keywords if checks.text_stems(word) & stems) / len(keywords)


def _support(option: str, explanation: set[str]) -> float:
    """How much of an option's content the explanation repeats (0-1)."""
    keywords = checks.objective_keywords(f"x {option}")
    return _share(keywords, explanation) if keywords else 0.0


def _score(value: float) -> int:
    return max(1, min(5, 1 + round(4 * value)))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _quotes(texts: Sequence[str]) -> list[str]:
    return [t[:_QUOTE] for t in texts if t][:3]
