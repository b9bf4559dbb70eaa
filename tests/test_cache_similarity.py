"""The cache's similarity layer: the embedded model, the guards, the labelled pairs
(tests/data/cache_pairs.jsonl, written for this project) and a paraphrased course served from
the cache (docs/cache.md#the-similarity-layer)."""

from __future__ import annotations

import json
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from generation import services
from generation.cache import guards
from generation.cache_models import CacheEntry
from generation.models import CourseGenerationJob, GenerationAttempt, JobStatus
from generation.providers import (
    EmbeddingRequest,
    PermanentProviderError,
    TransientProviderError,
    get_embedding_provider,
)
from generation.providers import local_embeddings as local
from generation.providers.openai import OpenAIProvider
from generation.schemas import CourseRequest
from monitoring.logs import flush_all
from monitoring.models import CourseGenerationLog as LogEntry
from tests.openai_server import running_openai_server

PAIRS = Path(__file__).parent / "data" / "cache_pairs.jsonl"
SMALL = {"num_modules": 1, "lessons_per_module": 2, "questions_per_lesson": 2}
LESSON_LEVEL = {"lesson_section", "assessment", "brain_bytes"}


def _submit(user: Any, base_class: Any, **fields: Any) -> CourseGenerationJob:
    request = CourseRequest(**{"audience": "secondary school students", **SMALL, **fields})
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job = CourseGenerationJob.objects.get(pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def _cache_kinds(job: CourseGenerationJob) -> set[str]:
    rows = GenerationAttempt.objects.filter(task__job=job, kind="cache")
    return set(rows.values_list("task__kind", flat=True))


# --- the embedded model ----------------------------------------------------------------------
def test_it_embeds_with_the_pinned_local_model() -> None:
    embedder = get_embedding_provider()
    assert embedder is not None
    provider, model = embedder
    result = provider.embed(
        EmbeddingRequest(
            texts=("Fractions for beginners", "Introduction to fractions"), model=model
        )
    )
    assert result.model == local.MODEL_VERSION and result.vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert 0.7 < float(result.vectors[0] @ result.vectors[1]) < 1.0


def test_it_refuses_a_model_file_that_is_not_the_pinned_one(monkeypatch: Any) -> None:
    monkeypatch.setattr(local, "TOKENIZER_SHA256", "0" * 64)
    with pytest.raises(local.EmbeddingModelError, match="expected 0000"):
        local.LocalEmbeddingProvider().load()


# --- the guards --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "differ"),
    [
        ("tables up to 5", "tables up to 12", True),
        ("world war i", "world war ii", True),
        ("the causes of world war ii", "why the second world war started", False),
        ("counting to twenty", "counting to 20", False),
        ("i want examples", "examples please", False),
    ],
)
def test_the_number_guard_reads_digits_words_and_numerals(a: str, b: str, differ: bool) -> None:
    assert (guards.number_guard(a, b) == "numbers") is differ


@pytest.mark.parametrize(
    ("a", "b", "differ"),
    [
        ("arithmetic with a calculator", "arithmetic without a calculator", True),
        ("verbal communication", "non-verbal communication", True),
        ("vertebrate animals", "invertebrate animals", True),
        ("don't use examples", "use examples", True),
        ("no calculators", "without calculators", False),
    ],
)
def test_the_negation_guard(a: str, b: str, differ: bool) -> None:
    assert (guards.negation_guard(a, b) == "negation") is differ


def test_word_families_count_as_shared() -> None:
    assert guards.overlap("the human digestive system", "how human digestion works") >= 0.5
    assert guards.unshared_words("staying safe online", "online safety") == ({"staying"}, set())


# --- the labelled pairs ------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_labelled_pairs_have_no_false_hit_and_most_paraphrases_hit() -> None:
    out = StringIO()
    call_command("cache_match", "--pairs", str(PAIRS), stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    rows, counts = lines[:-1], lines[-1]

    labels = Counter(json.loads(line)["label"] for line in PAIRS.read_text().splitlines())
    assert counts["pairs"] == len(rows) == sum(labels.values()) >= 40
    assert {"paraphrase", "number", "negation", "level", "language", "sibling"} <= set(labels)
    assert all(set(r) == {"index", "hit", "score", "rejected_by", "label"} for r in rows)
    assert counts["false_hits"] == 0
    assert [r for r in rows if r["hit"] and r["label"] != "paraphrase"] == []
    assert counts["paraphrase_hits"] >= 0.4 * counts["paraphrase_pairs"]
    # every guard is exercised by some near-miss above the threshold
    refused = {r["rejected_by"] for r in rows if not r["hit"]}
    assert {"numbers", "negation", "substitution", "audience", "threshold"} <= refused
    assert not CacheEntry.objects.exists()  # the scratch organisation is gone with its entries


@pytest.mark.django_db
def test_cache_match_says_which_line_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"a": {"topic": "Volcanoes"}, "b": {"topic": "x"}}\n')
    with pytest.raises(CommandError, match="line 1 b"):
        call_command("cache_match", "--pairs", str(bad))


# --- a course -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_it_serves_a_paraphrased_course_from_the_similarity_layer(
    teacher: Any, base_class: Any
) -> None:
    first = _submit(teacher, base_class, topic="Earthquakes and plate tectonics")

    second = _submit(teacher, base_class, topic="Plate tectonics and earthquakes")

    # the outline by similarity; its lessons then have the same place and titles, so their
    # outputs match on the request's text too
    assert _cache_kinds(second) == {"outline", *LESSON_LEVEL}
    assert second.outline == first.outline
    flush_all()
    hit = LogEntry.objects.filter(job=second, event="cache.hit", task__kind="outline").get()
    assert hit.data["layer"] == "similar" and hit.data["best_score"] > 0.9
    assert "best similarity" in hit.message


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_near_miss_and_logs_the_best_score_and_the_guard(
    teacher: Any, base_class: Any
) -> None:
    _submit(teacher, base_class, topic="Multiplication tables up to 5")

    other = _submit(teacher, base_class, topic="Multiplication tables up to 12")

    assert _cache_kinds(other) == set()
    flush_all()
    miss = LogEntry.objects.filter(job=other, event="cache.miss", task__kind="outline").get()
    assert miss.data["rejected_by"] == "numbers" and miss.data["best_score"] > 0.85
    assert miss.data["rejections"][0]["guard"] == "numbers"


@pytest.mark.django_db(transaction=True)
def test_with_embeddings_off_only_the_exact_layer_serves(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_EMBEDDING_PROVIDER = "off"
    _submit(teacher, base_class, topic="Earthquakes and plate tectonics")
    assert not CacheEntry.objects.exclude(embedding=None).exists()

    assert (
        _cache_kinds(_submit(teacher, base_class, topic="Plate tectonics and earthquakes")) == set()
    )
    again = _submit(teacher, base_class, topic="Earthquakes and plate tectonics")
    assert "outline" in _cache_kinds(again)


# --- the openai embeddings endpoint (the loopback server in tests/openai_server.py) -----------
def test_it_embeds_through_the_openai_endpoint_in_input_order() -> None:
    with running_openai_server() as server:
        provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url, timeout_s=5)
        texts = ("aaaa", "bbbb bbbb", "aaaa")
        result = provider.embed(EmbeddingRequest(texts=texts, model="text-embedding-3-small"))

        (request,) = server.requests
    assert request.path == "/v1/embeddings"
    assert (
        request.body["input"] == list(texts) and request.body["model"] == "text-embedding-3-small"
    )
    assert result.vectors.shape == (3, 8) and result.provider == "openai"
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(result.vectors[0], result.vectors[2])  # the server lists them reversed
    assert not np.allclose(result.vectors[0], result.vectors[1])
    assert result.usage.input_tokens == 4


def test_it_classifies_embeddings_errors_like_completion_errors() -> None:
    with running_openai_server() as server:
        server.script(status=429, headers={"retry-after": "3"}, body={"error": {"message": "x"}})
        server.script(status=401, body={"error": {"message": "bad key"}})
        provider = OpenAIProvider(api_key="sk-test", base_url=server.base_url, timeout_s=5)
        request = EmbeddingRequest(texts=("a",), model="text-embedding-3-small")
        with pytest.raises(TransientProviderError) as slow:
            provider.embed(request)
        assert slow.value.retry_after == 3
        with pytest.raises(PermanentProviderError):
            provider.embed(request)


@pytest.mark.parametrize(
    ("topic", "embedded"),
    [
        ("an introduction to fractions", "fractions"),
        ("volcanoes for beginners", "volcanoes"),
        ("shakespeare: an introduction", "shakespeare"),
        ("machine learning fundamentals", "machine learning"),
        ("introduction", "introduction"),
    ],
)
def test_course_boilerplate_is_not_embedded(topic: str, embedded: str) -> None:
    assert guards.strip_boilerplate(topic) == embedded
