"""course_generation_cache, the exact layer: what is stored, what a hit serves and records,
scope, expiry and purging (docs/cache.md)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts.models import Role
from generation import cache, services
from generation.cache_models import CacheEntry
from generation.llm import AttemptRecord, GenerationResult
from generation.models import CourseGenerationJob, GenerationAttempt, JobStatus
from generation.providers.base import Usage
from generation.schemas import CourseRequest, TaskKind
from tests.factories import BaseClassFactory, MembershipFactory, OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
LESSON_LEVEL = {"lesson_section", "assessment", "brain_bytes"}
SMALL = {"num_modules": 1, "lessons_per_module": 2, "questions_per_lesson": 2}


def _submit(user: Any, base_class: Any, **fields: Any) -> CourseGenerationJob:
    request = CourseRequest(**{"topic": "Volcanoes and plate tectonics", **SMALL, **fields})
    job = services.job_submit(user=user, base_class=base_class, request=request)
    job = CourseGenerationJob.objects.get(pk=job.pk)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def _cache_kinds(job: CourseGenerationJob) -> set[str]:
    rows = GenerationAttempt.objects.filter(task__job=job, kind="cache")
    return set(rows.values_list("task__kind", flat=True))


def _member_of_new_org(*, share: bool) -> tuple[Any, Any]:
    org = OrganisationFactory.create(share_generation_cache=share)
    user = UserFactory.create()
    MembershipFactory.create(user=user, organisation=org, role=Role.TEACHER)
    return user, BaseClassFactory.create(organisation=org)


def test_it_serves_a_repeated_request_from_the_cache_and_records_what_it_saved(
    teacher: Any, base_class: Any
) -> None:
    first = _submit(teacher, base_class)
    stored = CacheEntry.objects.filter(organisation=base_class.organisation)
    assert set(stored.values_list("kind", flat=True)) == {"outline", *LESSON_LEVEL}
    assert stored.count() == 1 + 2 * 3

    second = _submit(teacher, base_class)

    assert _cache_kinds(second) == {"outline", *LESSON_LEVEL}
    hits = GenerationAttempt.objects.filter(task__job=second, kind="cache")
    assert hits.count() == 7
    assert not hits.exclude(cost_usd=0).exists()
    assert all(h.saved_cost_usd > 0 for h in hits)
    assert all(h.outcome == "ok" and h.input_tokens == h.output_tokens == 0 for h in hits)
    # the same content for the cached parts, at a lower cost: summaries, mind map and metadata
    # are still generated
    assert second.outline == first.outline
    assert second.course is not None and first.course is not None
    assert second.course["modules"][0]["lessons"] == first.course["modules"][0]["lessons"]
    assert Decimal(0) < second.cost_usd < first.cost_usd
    assert stored.filter(hits=1).count() == 7


def test_it_normalises_whitespace_case_and_unicode_in_the_key(
    teacher: Any, base_class: Any
) -> None:
    _submit(teacher, base_class, topic="Volcanoes and plate tectonics")

    # A no-break space, not a tab: control characters are refused in a topic (one line only).
    again = _submit(teacher, base_class, topic="  VOLCANOES   and plate\u00a0tectonics ")

    assert "outline" in _cache_kinds(again)


@pytest.mark.parametrize(
    "change",
    [
        {"instructions": "Use examples from Iceland only."},
        {"level": "advanced"},
        {"language": "fr"},
        {"lessons_per_module": 3},
        {"audience": "university geology undergraduates"},
    ],
)
def test_it_misses_when_anything_that_shapes_the_content_differs(
    teacher: Any, base_class: Any, change: dict[str, Any]
) -> None:
    _submit(teacher, base_class)

    other = _submit(teacher, base_class, **change)

    assert _cache_kinds(other) == set()


def test_it_keeps_entries_within_an_organisation_unless_both_share(
    teacher: Any, base_class: Any
) -> None:
    _submit(teacher, base_class)
    outsider, outsider_class = _member_of_new_org(share=True)

    assert _cache_kinds(_submit(outsider, outsider_class)) == set()  # the first org shares not

    sharer, sharer_class = _member_of_new_org(share=True)
    assert _cache_kinds(_submit(sharer, sharer_class)) == {"outline", *LESSON_LEVEL}


def test_an_organisation_that_stops_sharing_takes_its_entries_back() -> None:
    first, first_class = _member_of_new_org(share=True)
    _submit(first, first_class, instructions="Our pupils visit the Reykjavik site in May.")
    organisation = first_class.organisation
    assert CacheEntry.objects.filter(organisation=organisation, shared=True).count() == 7

    organisation.share_generation_cache = False
    organisation.save(update_fields=["share_generation_cache"])
    sharer, sharer_class = _member_of_new_org(share=True)
    fields = {"instructions": "Our pupils visit the Reykjavik site in May."}
    assert _cache_kinds(_submit(sharer, sharer_class, **fields)) == set()
    # its own entries still serve it
    assert _cache_kinds(_submit(first, first_class, **fields)) == {"outline", *LESSON_LEVEL}


def test_it_neither_reads_nor_writes_when_switched_off(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    settings.COURSEGEN_CACHE_ENABLED = False
    _submit(teacher, base_class)
    second = _submit(teacher, base_class)

    assert not CacheEntry.objects.exists()
    assert _cache_kinds(second) == set()


def _result(*outcomes: str, data: dict[str, Any] | None = None) -> GenerationResult:
    attempts = [
        AttemptRecord(n + 1, "first", outcome, "m", Usage(), Decimal("0.01"), 5)
        for n, outcome in enumerate(outcomes)
    ]
    return GenerationResult(data=data or {"title": "x"}, attempts=attempts)


def test_it_scores_task_quality_from_failed_replies() -> None:
    assert cache.output_quality(kind=TaskKind.OUTLINE, data={}, result=_result("ok")) == 1.0
    two_failed = _result("invalid", "invalid", "ok")
    assert cache.output_quality(kind=TaskKind.OUTLINE, data={}, result=two_failed) == 0.5


def test_it_stores_only_outputs_above_the_quality_threshold(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    job = _submit(teacher, base_class)
    CacheEntry.objects.all().delete()
    task = job.tasks.get(kind="outline")
    spec = services.task_spec_build(task=task, worker="w")

    poor = _result("invalid", "invalid", "ok", data=task.output)
    assert cache.cache_entry_store(task=task, spec=spec, result=poor, wall_s=1.0) is None
    held = _result("ok", data=task.output)
    held.moderation = "held"
    assert cache.cache_entry_store(task=task, spec=spec, result=held, wall_s=1.0) is None

    good = _result("invalid", "ok", data=task.output)
    entry = cache.cache_entry_store(task=task, spec=spec, result=good, wall_s=1.5)
    assert entry is not None and entry.quality == 0.75 and entry.duration_ms == 1500
    assert entry.cost_usd == Decimal("0.02")
    # a second store of the same key and organisation keeps the first
    assert cache.cache_entry_store(task=task, spec=spec, result=good, wall_s=1.0) is None


def test_it_slides_the_expiry_on_a_hit_and_never_serves_an_expired_entry(
    teacher: Any, base_class: Any
) -> None:
    _submit(teacher, base_class)
    outline = CacheEntry.objects.get(kind="outline")
    soon = timezone.now() + timedelta(minutes=5)
    CacheEntry.objects.filter(pk=outline.pk).update(expires_at=soon)

    _submit(teacher, base_class)
    outline.refresh_from_db()
    assert outline.expires_at > timezone.now() + timedelta(days=29)  # 30 days from the hit
    assert outline.hits == 1 and outline.last_hit_at is not None

    CacheEntry.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    third = _submit(teacher, base_class)
    assert _cache_kinds(third) == set()


def test_the_beat_purge_deletes_expired_and_outdated_entries_in_batches(
    teacher: Any, base_class: Any
) -> None:
    _submit(teacher, base_class)
    assert CacheEntry.objects.count() == 7
    past = timezone.now() - timedelta(seconds=1)
    CacheEntry.objects.filter(kind="assessment").update(expires_at=past)
    CacheEntry.objects.filter(kind="outline").update(prompt_version="v0-retired")
    CacheEntry.objects.filter(kind="brain_bytes").update(schema_hash="0" * 16)

    assert cache.cache_purge_expired(batch=2) == 2 + 1 + 2

    assert set(CacheEntry.objects.values_list("kind", flat=True)) == {"lesson_section"}


def test_cache_purge_deletes_by_kind_organisation_age_or_everything(
    teacher: Any, base_class: Any, capsys: Any
) -> None:
    _submit(teacher, base_class)
    slug = base_class.organisation.slug

    call_command("cache_purge", "--kind", "assessment")
    assert not CacheEntry.objects.filter(kind="assessment").exists()
    call_command("cache_purge", "--older-than", "1")
    assert CacheEntry.objects.count() == 5  # none is a day old
    call_command("cache_purge", "--organisation", slug, "--kind", "outline")
    assert CacheEntry.objects.count() == 4
    call_command("cache_purge", "--all")
    assert not CacheEntry.objects.exists()
    assert "deleted 4 cache entries" in capsys.readouterr().out

    with pytest.raises(CommandError):
        call_command("cache_purge")
    with pytest.raises(CommandError):
        call_command("cache_purge", "--organisation", "no-such-school")


def test_an_entry_stored_unmoderated_is_not_served_while_moderation_is_on(
    client_for: Any, teacher: Any, base_class: Any, monkeypatch: Any, settings: Any
) -> None:
    # Stored while moderation was off (moderation ""), an entry was served as a hit, never
    # moderated, once moderation was on: published unchecked (found in review).
    from generation.providers.offline.moderation import UNSAFE_SENTENCE
    from tests.courses import UnsafeProvider

    settings.COURSEGEN_JUDGE_ENABLED = False
    provider = UnsafeProvider(always={"lesson_section m1.l1"})
    monkeypatch.setattr("generation.services.runs.get_provider", lambda: provider)
    monkeypatch.setattr("generation.services.dedupe.get_provider", lambda: provider)
    settings.COURSEGEN_MODERATION_PROVIDER = "off"
    _submit(teacher, base_class)
    assert CacheEntry.objects.filter(kind="lesson_section", moderation="").exists()
    settings.COURSEGEN_MODERATION_PROVIDER = "offline"
    provider.always = set()  # the model now writes clean text: only the cache has the bad one

    job = _submit(teacher, base_class)

    assert "lesson_section" not in _cache_kinds(job)  # generated and moderated instead
    course = client_for(teacher).get(f"/api/jobs/{job.id}/course/").content.decode()
    assert UNSAFE_SENTENCE not in course
    # and with moderation off again the stored entry serves as before
    settings.COURSEGEN_MODERATION_PROVIDER = "off"
    assert "lesson_section" in _cache_kinds(_submit(teacher, base_class))
