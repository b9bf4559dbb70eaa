"""The LLM judge (llm-judge-v1): runs per lesson after finalize, the ledger and its own cost,
thresholds that regenerate once and re-judge, alerts, idempotency and recovery."""

from __future__ import annotations

import json
from collections import deque
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from generation import recovery
from generation.models import (
    CourseEvaluation,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    GenerationTaskVersion,
    JudgeRun,
    JudgeRunStatus,
    JudgeStatus,
    RegenerationRequest,
)
from generation.providers import (
    Completion,
    CompletionRequest,
    Provider,
    TransientProviderError,
    Usage,
)
from generation.providers.offline import OfflineProvider
from generation.quality import judging, thresholds
from generation.rubric import JUDGE_EVALUATOR, Criterion, LessonVerdict
from monitoring.models import Alert, AlertKind
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


class ScriptedJudge(Provider):
    """Generation by the offline simulator; the judge's verdicts from a script of scores (the
    last one repeats), so a test decides what the judge thinks."""

    name = "scripted"

    def __init__(self, *scores: int, fail_judge: Exception | None = None) -> None:
        self.offline = OfflineProvider()
        self.scores = deque(scores)
        self.fail_judge = fail_judge
        self.judge_calls = 0

    def complete(self, request: CompletionRequest) -> Completion:
        if request.purpose != "judge":
            return self.offline.complete(request)
        self.judge_calls += 1
        if self.fail_judge is not None:
            raise self.fail_judge
        score = self.scores.popleft() if len(self.scores) > 1 else self.scores[0]
        verdict: dict[str, Any] = {
            c.value: {"justification": f"{c.value} scored {score}", "evidence": [], "score": score}
            for c in Criterion
        }
        verdict["improvement"] = "Give a worked example for every objective."
        return Completion(
            data=verdict,
            raw_text=json.dumps(verdict),
            usage=Usage(input_tokens=2000, output_tokens=300),
            latency_s=0.01,
            model=request.model,
            provider=self.name,
        )


def judge_again(job: CourseGenerationJob, provider: Provider, monkeypatch: Any) -> None:
    """Send the (unjudged) course to the judge with `provider` answering."""
    monkeypatch.setattr(judging, "get_provider", lambda: provider)
    CourseGenerationJob.objects.filter(pk=job.pk).update(judge_status=JudgeStatus.PENDING)
    judging.job_judge_start(job_id=job.pk)
    job.refresh_from_db()


@pytest.fixture
def unjudged(teacher: Any, base_class: Any, settings: Any) -> CourseGenerationJob:
    settings.COURSEGEN_JUDGE_ENABLED = False
    job = finished_job(teacher, base_class)
    settings.COURSEGEN_JUDGE_ENABLED = True
    return job


def test_it_judges_every_lesson_after_finalize_and_then_the_course(
    teacher: Any, base_class: Any
) -> None:
    job = finished_job(teacher, base_class)
    job.refresh_from_db()

    runs = list(JudgeRun.objects.filter(job=job))
    assert job.judge_status == JudgeStatus.DONE
    assert [r.lesson_key for r in runs] == ["m1.l1", "m1.l2"]
    assert all(r.status == JudgeRunStatus.SUCCEEDED and r.rounds >= 1 for r in runs)
    lessons = CourseEvaluation.objects.filter(
        job=job, evaluator=JUDGE_EVALUATOR, task__isnull=False
    )
    course = CourseEvaluation.objects.get(job=job, evaluator=JUDGE_EVALUATOR, task__isnull=True)
    assert {e.details["lesson"] for e in lessons} == {"m1.l1", "m1.l2"}
    assert {e.task_id for e in lessons} == {r.task_id for r in runs}
    for evaluation in lessons:
        verdict = LessonVerdict.model_validate(evaluation.details["verdict"])
        assert evaluation.details["simulated"] is True  # the offline provider's judge
        assert evaluation.overall == verdict.overall
        assert set(evaluation.criteria) == {c.value for c in Criterion}
    assert course.details["judged"] == 2 and course.details["simulated"] is True
    assert job.judge_score == course.overall
    finals = [e for e in lessons if e.details["round"] == max(r.rounds for r in runs)]
    assert finals  # the course's score is the mean of the lessons' final verdicts


def test_it_records_the_judge_calls_in_the_ledger_apart_from_the_generation_cost(
    teacher: Any, base_class: Any, client_for: Any
) -> None:
    job = finished_job(teacher, base_class)
    job.refresh_from_db()

    calls = GenerationAttempt.objects.filter(judge_run__job=job)
    assert calls.count() >= 2
    assert set(calls.values_list("kind", flat=True)) == {"judge"}
    assert not calls.filter(task__isnull=False).exists()
    judge_cost = sum((a.cost_usd for a in calls), Decimal(0))
    assert judge_cost > 0 and abs(job.judge_cost_usd - judge_cost) <= Decimal("0.00001")
    generation = sum((t.cost_usd for t in job.tasks.all()), Decimal(0))
    assert abs(job.cost_usd - generation) <= Decimal("0.00001")  # the judge is not in it
    body = client_for(teacher).get(f"/api/jobs/{job.pk}/").json()
    breakdown = body["cost_breakdown"]
    assert Decimal(breakdown["judge_usd"]) == job.judge_cost_usd
    assert Decimal(breakdown["total_usd"]) == job.cost_usd + job.judge_cost_usd
    assert Decimal(breakdown["generation_usd"]) + Decimal(breakdown["repairs_usd"]) == job.cost_usd
    assert body["judge_status"] == "done" and body["judge_score"] == job.judge_score


def test_it_does_not_judge_when_switched_off(teacher: Any, base_class: Any, settings: Any) -> None:
    settings.COURSEGEN_JUDGE_ENABLED = False
    job = finished_job(teacher, base_class)
    job.refresh_from_db()

    assert job.judge_status == JudgeStatus.OFF and job.judge_score is None
    assert not JudgeRun.objects.filter(job=job).exists()
    assert not GenerationAttempt.objects.filter(kind="judge").exists()
    assert list(job.evaluations.values_list("evaluator", flat=True)) == ["heuristic-v1"]


def test_a_failing_judge_never_fails_or_delays_the_course(
    unjudged: CourseGenerationJob, monkeypatch: Any, settings: Any
) -> None:
    settings.COURSEGEN_TASK_DEFER_BUDGET_S = 0  # no waiting out the outage
    settings.COURSEGEN_TASK_DEFER_MAX_S = 0.1  # and its one deferral (eager: a sleep) is short
    broken = ScriptedJudge(5, fail_judge=TransientProviderError("503", status_code=503))
    settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 1

    judge_again(unjudged, broken, monkeypatch)

    assert unjudged.status == "succeeded" and unjudged.course is not None
    runs = JudgeRun.objects.filter(job=unjudged)
    assert {r.status for r in runs} == {JudgeRunStatus.FAILED}
    assert all("provider unavailable" in r.error for r in runs)
    assert unjudged.judge_status == JudgeStatus.DONE and unjudged.judge_score is None
    failed_calls = GenerationAttempt.objects.filter(judge_run__job=unjudged, outcome="transient")
    assert failed_calls.count() == broken.judge_calls  # every call is in the ledger


def test_a_lesson_below_threshold_is_regenerated_once_and_judged_again(
    unjudged: CourseGenerationJob, monkeypatch: Any
) -> None:
    # Round 1 of each lesson scores 2 (below every minimum), round 2 scores 5.
    scripted = ScriptedJudge(2, 5, 2, 5)

    judge_again(unjudged, scripted, monkeypatch)

    runs = list(JudgeRun.objects.filter(job=unjudged).order_by("lesson_key"))
    assert [r.rounds for r in runs] == [2, 2]
    assert all(r.regenerated == ["lesson_section", "assessment"] for r in runs)
    assert [r.below_threshold for r in runs] == [False, False]
    versions = GenerationTaskVersion.objects.filter(task__job=unjudged, number=2)
    assert versions.count() == 4  # each lesson's section and assessment, once
    instruction = versions.first().instruction  # type: ignore[union-attr]
    assert "below the quality bar" in instruction and "worked example" in instruction
    assert all(v.created_by is None for v in versions)  # the system asked, not a person
    requests = RegenerationRequest.objects.filter(task__job=unjudged)
    assert {(r.source, r.requested_by_id, r.status) for r in requests} == {
        ("judge", None, "succeeded")
    }
    assert requests.count() == 4
    rounds = CourseEvaluation.objects.filter(
        job=unjudged, evaluator=JUDGE_EVALUATOR, task__isnull=False
    )
    assert sorted(e.details["round"] for e in rounds) == [1, 1, 2, 2]
    assert unjudged.judge_score == 1.0  # the course takes each lesson's final verdict
    assert not Alert.objects.filter(kind=AlertKind.QUALITY_BELOW_THRESHOLD).exists()


def test_a_lesson_still_below_threshold_raises_the_alert_with_the_judges_reasons(
    unjudged: CourseGenerationJob, monkeypatch: Any
) -> None:
    scripted = ScriptedJudge(2)

    judge_again(unjudged, scripted, monkeypatch)

    runs = list(JudgeRun.objects.filter(job=unjudged))
    assert all(r.rounds == 2 and r.below_threshold for r in runs)
    alerts = Alert.objects.filter(kind=AlertKind.QUALITY_BELOW_THRESHOLD)
    assert alerts.count() == 2  # one per lesson
    alert = alerts.get(subject=f"judge:{unjudged.pk}:m1.l1")
    assert "Accuracy 2/5, minimum 4: accuracy scored 2" in alert.message
    assert alert.data["regenerated"] == ["lesson_section", "assessment"]
    assert scripted.judge_calls == 4  # two rounds per lesson, never a third


def test_a_repeated_message_neither_pays_nor_regenerates_again(
    unjudged: CourseGenerationJob, monkeypatch: Any
) -> None:
    scripted = ScriptedJudge(2)
    judge_again(unjudged, scripted, monkeypatch)
    calls, versions = scripted.judge_calls, GenerationTaskVersion.objects.count()

    for run in JudgeRun.objects.filter(job=unjudged):
        assert judging.judge_run_execute(run_id=run.pk, provider=scripted) is None
    judging.job_judge_start(job_id=unjudged.pk)

    assert scripted.judge_calls == calls
    assert GenerationTaskVersion.objects.count() == versions
    assert (
        CourseEvaluation.objects.filter(
            job=unjudged, evaluator=JUDGE_EVALUATOR, task__isnull=True
        ).count()
        == 1
    )


def test_a_run_resumes_from_its_recorded_round_after_a_crash(
    unjudged: CourseGenerationJob, monkeypatch: Any, settings: Any
) -> None:
    scripted = ScriptedJudge(2, 5)
    monkeypatch.setattr(judging, "send_runs", lambda run_ids: None)  # the messages are lost
    judge_again(unjudged, scripted, monkeypatch)
    run = JudgeRun.objects.filter(job=unjudged).first()
    assert run is not None and run.status == JudgeRunStatus.PENDING
    # A worker records round 1, then dies before regenerating: its lease runs out.
    monkeypatch.setattr(judging, "_regenerate_once", _crash)
    with pytest.raises(SystemExit):
        judging.judge_run_execute(run_id=run.pk, provider=scripted, worker="w1")
    run.refresh_from_db()
    assert run.rounds == 1 and run.status == JudgeRunStatus.RUNNING
    JudgeRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(1))
    monkeypatch.undo()
    monkeypatch.setattr(judging, "get_provider", lambda: scripted)

    judging.judge_run_execute(run_id=run.pk, provider=scripted, worker="w2")

    run.refresh_from_db()
    assert run.status == JudgeRunStatus.SUCCEEDED and run.rounds == 2 and run.runs == 2
    assert scripted.judge_calls == 2  # round 1 was not asked again


def _crash(*args: Any, **kwargs: Any) -> bool:
    raise SystemExit("worker killed")


def test_the_reconciler_sends_the_judge_what_a_lost_message_left_behind(
    unjudged: CourseGenerationJob, monkeypatch: Any
) -> None:
    scripted = ScriptedJudge(5)
    monkeypatch.setattr(judging, "get_provider", lambda: scripted)
    # finalize marked the course for the judge, but its judge_job message never arrived
    CourseGenerationJob.objects.filter(pk=unjudged.pk).update(judge_status=JudgeStatus.PENDING)

    report = recovery.reconcile(now=timezone.now() + timedelta(hours=1))

    unjudged.refresh_from_db()
    assert report.judge_recovered >= 1
    assert unjudged.judge_status == JudgeStatus.DONE and unjudged.judge_score == 1.0


def test_the_judge_defers_while_the_provider_is_unavailable(
    unjudged: CourseGenerationJob, monkeypatch: Any, settings: Any
) -> None:
    settings.COURSEGEN_TRANSIENT_MAX_ATTEMPTS = 1
    down = ScriptedJudge(5, fail_judge=TransientProviderError("503", status_code=503))
    monkeypatch.setattr(judging, "send_runs", lambda run_ids: None)
    judge_again(unjudged, down, monkeypatch)
    run = JudgeRun.objects.filter(job=unjudged).first()
    assert run is not None

    delay = judging.judge_run_execute(run_id=run.pk, provider=down)

    run.refresh_from_db()
    assert delay is not None and delay > 0
    assert run.status == JudgeRunStatus.PENDING and run.deferrals == 1
    assert "provider unavailable" in run.error


def test_regeneration_targets_the_task_where_the_evidence_is(
    unjudged: CourseGenerationJob,
) -> None:
    assessment = GenerationTask.objects.get(job=unjudged, kind="assessment", key="m1.l1")
    stem = (assessment.output or {})["questions"][1]["stem"]
    verdict = _verdict(4, accuracy=(2, [stem]))
    run = JudgeRun.objects.create(
        job=unjudged,
        lesson_key="m1.l1",
        task=GenerationTask.objects.get(job=unjudged, kind="lesson_section", key="m1.l1"),
    )
    limits = thresholds.Thresholds.from_settings()

    targets = thresholds.regeneration_targets(verdict, limits, run=run)
    clarity = thresholds.regeneration_targets(
        _verdict(4, clarity_examples=(1, [])), limits, run=run
    )

    assert [t.kind for t in targets] == ["assessment"]  # the quoted question is the problem
    assert [t.kind for t in clarity] == ["lesson_section"]  # the rubric's part for clarity


def _verdict(default: int, **scores: tuple[int, list[str]]) -> LessonVerdict:
    data: dict[str, Any] = {
        c.value: {
            "justification": "because",
            "evidence": scores.get(c.value, (default, []))[1],
            "score": scores.get(c.value, (default, []))[0],
        }
        for c in Criterion
    }
    return LessonVerdict.model_validate({**data, "improvement": "Fix it."})


def test_thresholds_read_per_criterion_minimums_and_the_overall(settings: Any) -> None:
    settings.COURSEGEN_JUDGE_MIN_SCORES = {"accuracy": 4}
    settings.COURSEGEN_JUDGE_MIN_OVERALL = 0.7
    limits = thresholds.Thresholds.from_settings()

    assert limits.failing(_verdict(5, accuracy=(3, []))) == [Criterion.ACCURACY]
    assert not limits.below(_verdict(5, clarity_examples=(1, [])))  # 0.8 overall, no minimum
    assert limits.below(_verdict(4, clarity_examples=(1, [])))  # overall 0.6 < 0.7
    reasons = thresholds.reasons(_verdict(4, accuracy=(3, ["x = 2"])), limits)
    assert reasons == ['Accuracy 3/5, minimum 4: because (evidence: "x = 2")']


# --- The offline simulator's judge and prompt rules -------------------------------------------
def test_the_candidate_prompt_carries_the_rules_the_simulator_follows() -> None:
    from generation.prompts import build_messages, prompt_versions
    from generation.providers.offline.content.rules import RULE_PHRASES, followed_rules
    from generation.schemas import CourseRequest, TaskKind

    request = CourseRequest(topic="Tides")
    context = {
        "module_index": 1,
        "module_title": "The sea",
        "lesson_index": 1,
        "lesson_title": "Tides",
        "learning_objectives": ["Explain why tides happen"],
    }

    def rules(version: str) -> list[str]:
        messages = build_messages(
            TaskKind.LESSON_SECTION, request=request, outline=None, context=context,
            version=version,
        )  # fmt: skip
        return followed_rules(messages)

    assert prompt_versions(TaskKind.LESSON_SECTION) == ["v2", "v3"]
    assert rules("v2") == [] and rules("v3") == sorted(RULE_PHRASES)
    with pytest.raises(ValueError, match="no prompt version"):
        rules("v9")


def test_the_simulated_judge_reads_the_lesson_it_is_given() -> None:
    from pathlib import Path

    from generation.providers.offline.judge import simulated_verdict
    from generation.quality import calibration

    items = calibration.load_set(Path(__file__).parent / "calibration" / "judge_set.json")
    water = next(i for i in items if i.id == "water-cycle")
    jargon = next(f.lesson for f in water.flawed if f.flaw == "off_level_vocabulary")
    repeated = next(f.lesson for f in water.flawed if f.flaw == "duplicate_question")

    good = LessonVerdict.model_validate(simulated_verdict(water.good.context()))
    hard = LessonVerdict.model_validate(simulated_verdict(jargon.context()))
    twice = LessonVerdict.model_validate(simulated_verdict(repeated.context()))

    assert hard.audience_fit.score < good.audience_fit.score
    assert "Insolation" in hard.audience_fit.evidence  # quoted from the lesson
    assert twice.question_quality.score < good.question_quality.score
    assert "repeats an earlier question" in twice.question_quality.justification
    assert good.overall > hard.overall and good.overall > twice.overall
