"""The course evaluator (generation/evaluation.py): criteria, feedback, the record at finalize,
the evaluations endpoint and the admin."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Role
from generation.evaluation import CRITERIA, EVALUATOR, evaluate_course
from generation.models import CourseEvaluation, CourseGenerationJob
from generation.schemas import TaskKind
from tests.courses import finished_job
from tests.factories import BaseClassFactory, OrganisationFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _evaluate(job: CourseGenerationJob, course: dict[str, Any], **kwargs: Any) -> Any:
    request = kwargs.pop("request", job.course_request)
    return evaluate_course(
        course=course,
        request=request,
        tasks=list(job.tasks.all()),
        invalid_replies=kwargs.pop("invalid_replies", {}),
        reask_share=kwargs.pop("reask_share", 0.0),
    )


def _lessons(course: dict[str, Any]) -> list[dict[str, Any]]:
    return [lesson for module in course["modules"] for lesson in module["lessons"]]


@pytest.fixture
def job(teacher: Any, base_class: Any) -> CourseGenerationJob:
    return finished_job(teacher, base_class)


def test_it_scores_every_finished_course_at_finalize(job: CourseGenerationJob) -> None:
    evaluation = CourseEvaluation.objects.get(job=job, evaluator=EVALUATOR)

    assert evaluation.evaluator == EVALUATOR
    assert set(evaluation.criteria) == set(CRITERIA)
    assert all(0.0 <= score <= 1.0 for score in evaluation.criteria.values())
    assert job.quality_score == evaluation.overall
    # The offline simulator writes clean, on-level content on the first call.
    assert evaluation.overall == 1.0 and evaluation.feedback == []


def test_finalize_records_what_a_full_evaluation_scores(job: CourseGenerationJob) -> None:
    """Finalize skips comparing questions again when its de-duplication pass found none: the
    record is the same as an evaluation that compares them."""
    assert job.course is not None
    recorded = CourseEvaluation.objects.get(job=job, evaluator=EVALUATOR)
    card = _evaluate(job, job.course, reask_share=job.reask_share)

    assert (recorded.criteria, recorded.feedback, recorded.overall) == (
        card.criteria,
        card.feedback,
        card.overall,
    )


def test_the_overall_is_the_weighted_mean_of_the_criteria(job: CourseGenerationJob) -> None:
    assert job.course is not None
    card = _evaluate(job, job.course, reask_share=0.5)

    assert card.criteria["cost_efficiency"] == 0.5
    expected = sum(card.criteria[n] * w for n, w in CRITERIA.items()) / sum(CRITERIA.values())
    assert card.overall == pytest.approx(expected, abs=1e-4)
    assert "50% of the cost went on repairs" in card.feedback


def test_it_scores_objective_coverage_as_a_share_and_names_the_gap(
    job: CourseGenerationJob,
) -> None:
    assert job.course is not None
    course = copy.deepcopy(job.course)
    lesson = _lessons(course)[1]
    lesson["learning_objectives"].append("Measure quasar redshift spectroscopically")

    card = _evaluate(job, course)

    objectives = sum(len(item["learning_objectives"]) for item in _lessons(course))
    assert card.criteria["objective_coverage"] == pytest.approx(1 - 1 / objectives, abs=1e-4)
    assert any(
        f"lesson {lesson['key']} covers 0%" in line and "quasar, redshift" in line
        for line in card.feedback
    )


def test_it_marks_down_give_away_questions_and_repeats(job: CourseGenerationJob) -> None:
    assert job.course is not None
    course = copy.deepcopy(job.course)
    first, second = _lessons(course)
    question = first["assessment"]["questions"][0]
    question["options"][-1] = "All of the above"
    second["assessment"]["questions"][2]["stem"] = question["stem"]

    card = _evaluate(job, course)

    assert card.criteria["assessment_quality"] == pytest.approx(1 - 0.8 / 6, abs=1e-4)
    assert card.criteria["uniqueness"] == pytest.approx(1 - 1 / 6, abs=1e-4)
    assert any("lesson m1.l1 question 1" in line and "catch-all" in line for line in card.feedback)
    assert any(
        line.startswith("lesson m1.l2 question 3 repeats lesson m1.l1") for line in card.feedback
    )


def test_it_counts_tasks_whose_replies_failed_validation(job: CourseGenerationJob) -> None:
    assert job.course is not None
    tasks = list(job.tasks.all())
    outline = next(t for t in tasks if t.kind == TaskKind.OUTLINE)

    card = _evaluate(job, job.course, invalid_replies={outline.pk: 2})

    assert card.criteria["first_pass"] == pytest.approx(1 - 1 / len(tasks), abs=1e-4)
    assert "outline course: 2 invalid replies repaired" in card.feedback


def test_transport_retries_do_not_count_against_the_content(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    from generation.models import AttemptKind, GenerationAttempt
    from generation.providers import get_provider

    settings.COURSEGEN_OFFLINE_FAULTS = "server_error=0.3"
    settings.COURSEGEN_TRANSIENT_BASE_WAIT_S = 0.0
    get_provider.cache_clear()  # the provider is built once per process

    job = finished_job(teacher, base_class)

    retried = GenerationAttempt.objects.filter(task__job=job, kind=AttemptKind.TRANSPORT_RETRY)
    assert retried.exists()  # the faults happened
    evaluation = job.evaluations.get(evaluator=EVALUATOR)
    assert evaluation.criteria["first_pass"] == 1.0


def test_invalid_replies_lower_the_score_and_name_the_task(
    teacher: Any, base_class: Any, settings: Any
) -> None:
    from generation.providers import get_provider

    settings.COURSEGEN_OFFLINE_FAULTS = "invalid=0.3"
    get_provider.cache_clear()

    job = finished_job(teacher, base_class)

    evaluation = job.evaluations.get(evaluator=EVALUATOR)
    assert evaluation.criteria["first_pass"] < 1.0
    assert evaluation.criteria["cost_efficiency"] == pytest.approx(1 - job.reask_share, abs=1e-4)
    assert job.quality_score is not None and job.quality_score < 1.0
    assert any("invalid repl" in line for line in evaluation.feedback)


def test_it_scores_reading_level_by_distance_from_the_band(
    job: CourseGenerationJob, settings: Any
) -> None:
    assert job.course is not None
    settings.COURSEGEN_READING_GRADE_BANDS = {
        **settings.COURSEGEN_READING_GRADE_BANDS,
        "beginner": (30.0, 40.0),  # no lesson reads this hard
    }
    card = _evaluate(job, job.course)

    assert card.criteria["readability"] == 0.0  # more than four grades below the band
    assert any("reads at grade" in line and "needs 30-40" in line for line in card.feedback)
    # Outside English, Flesch-Kincaid and the objective-word match do not apply: skipped, not
    # failed, their weight spread over the rest.
    french = job.course_request.model_copy(update={"language": "fr"})
    card = _evaluate(job, job.course, request=french)
    assert set(CRITERIA) - set(card.criteria) == {"readability", "objective_coverage"}
    assert card.overall == 1.0


def test_a_failing_evaluator_leaves_the_course_unscored_not_unfinished(
    teacher: Any, base_class: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise KeyError("modules")

    monkeypatch.setattr("generation.evaluation.evaluate_job", broken)

    job = finished_job(teacher, base_class)

    assert job.course is not None and job.quality_score is None
    assert not job.evaluations.filter(evaluator=EVALUATOR).exists()


# --- The endpoint and the admin ------------------------------------------------------------------
def test_the_job_and_its_evaluations_are_in_the_api(
    job: CourseGenerationJob, client_for: Any, teacher: Any
) -> None:
    client = client_for(teacher)

    detail = client.get(f"/api/jobs/{job.id}/").json()
    evaluations = client.get(f"/api/jobs/{job.id}/evaluations/")

    assert detail["quality_score"] == 1.0
    assert evaluations.status_code == 200
    # The heuristic's, beside the LLM judge's (tests/test_judge.py)
    [body] = [e for e in evaluations.json() if e["evaluator"] == EVALUATOR]
    assert body["overall"] == 1.0
    assert set(body["criteria"]) == set(CRITERIA)


def test_evaluations_are_hidden_outside_the_organisation(
    job: CourseGenerationJob, client_for: Any, make_member: Any, api_client: Any
) -> None:
    other_org = OrganisationFactory.create()
    BaseClassFactory.create(organisation=other_org)
    outsider = make_member(Role.ADMIN, org=other_org)

    assert client_for(outsider).get(f"/api/jobs/{job.id}/evaluations/").status_code == 404
    assert api_client.get(f"/api/jobs/{job.id}/evaluations/").status_code in (401, 403)


def test_a_regenerated_course_is_evaluated_again_and_checked(
    job: CourseGenerationJob, client_for: Any, teacher: Any, settings: Any
) -> None:
    from monitoring.models import Alert, AlertKind

    task = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l1")
    settings.MONITORING_QUALITY_THRESHOLD = 1.01  # any score is below: the check must run

    response = client_for(teacher).post(
        f"/api/jobs/{job.id}/tasks/{task.pk}/regenerate/", {}, format="json"
    )

    assert response.status_code == 202, response.json()
    newest, first = job.evaluations.filter(evaluator=EVALUATOR)
    assert newest.created_at > first.created_at
    job.refresh_from_db()
    assert job.quality_score == newest.overall
    alert = Alert.objects.get(kind=AlertKind.QUALITY_BELOW_THRESHOLD)
    assert alert.subject == f"job:{job.pk}"


def test_a_failed_regeneration_keeps_the_course_and_its_score(
    job: CourseGenerationJob, client_for: Any, teacher: Any, settings: Any
) -> None:
    from generation.providers import get_provider

    task = job.tasks.get(kind=TaskKind.ASSESSMENT, key="m1.l1")
    settings.COURSEGEN_OFFLINE_FAULTS = "malformed=1.0"  # every reply fails to parse
    get_provider.cache_clear()
    course = job.course

    client_for(teacher).post(f"/api/jobs/{job.id}/tasks/{task.pk}/regenerate/", {}, format="json")

    job.refresh_from_db()
    assert job.course == course
    assert job.evaluations.filter(evaluator=EVALUATOR).count() == 1
    assert job.quality_score == 1.0


def test_staff_see_evaluations_in_the_admin(job: CourseGenerationJob) -> None:
    staff = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client = Client()
    client.force_login(staff)

    listing = client.get("/admin/generation/courseevaluation/?o=2")  # by overall, weakest first
    change = client.get(f"/admin/generation/coursegenerationjob/{job.id}/change/")

    assert listing.status_code == 200 and EVALUATOR in listing.content.decode()
    assert change.status_code == 200
    assert "objective_coverage" in change.content.decode()  # the evaluation inline
    assert client.get("/admin/generation/courseevaluation/add/").status_code == 403
